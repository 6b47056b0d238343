from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from matminer.featurizers.composition import ElementProperty, IonProperty, Stoichiometry, ValenceOrbital
from pymatgen.core import Composition

from matcard.errors import UsageError
from matcard.featurize import featurizer_from_config
from matcard.featurize.composition import (
    GLASS_OXIDES,
    CompositionFeaturizer,
    featurize_compositions,
    oxide_compositions,
)
from matcard.featurize.graph import FeaturizationError


def _matminer(composition: Composition, *featurizers) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.concatenate([np.asarray(f.featurize(composition), dtype=float) for f in featurizers])


@pytest.mark.parametrize("formula", ["Fe2O3", "LiFePO4", "BaTiO3"])
def test_default_descriptors_match_matminer(formula: str) -> None:
    composition = Composition(formula)
    expected = _matminer(
        composition, ElementProperty.from_preset("magpie"), Stoichiometry(), ValenceOrbital()
    )
    featurizer = CompositionFeaturizer()
    np.testing.assert_allclose(featurizer.features(formula), expected, rtol=1e-12)
    data = featurizer(formula, y=1)
    assert tuple(data.x.shape) == (1, featurizer.node_dim) == (1, len(expected))
    assert data.y.tolist() == [1]
    # labels are matminer's own, in the configured order
    assert featurizer.feature_labels[:3] == ElementProperty.from_preset("magpie").feature_labels()[:3]


def test_ion_property_with_oxidation_state_guessing_matches_matminer() -> None:
    featurizer = CompositionFeaturizer(descriptors=["stoichiometry", "ion_property"])
    expected = _matminer(Composition("Fe2O3"), Stoichiometry(), IonProperty())
    got = featurizer.features("Fe2O3")
    np.testing.assert_allclose(got, expected)
    assert got[-3] == 1.0  # charge balance found for Fe3+ / O2-


def test_structure_is_featurized_through_its_composition(mp20_items) -> None:
    _, structure = mp20_items[0]
    featurizer = CompositionFeaturizer()
    np.testing.assert_allclose(featurizer.features(structure), featurizer.features(structure.composition))


def test_bad_items_are_collected_with_reasons() -> None:
    featurizer = CompositionFeaturizer()
    matrix, failures = featurize_compositions(["NaCl", "not a formula!", None, "SiO2"], featurizer)
    assert matrix.shape == (4, featurizer.node_dim)
    assert np.isfinite(matrix[[0, 3]]).all() and np.isnan(matrix[[1, 2]]).all()
    assert [index for index, _ in failures] == [1, 2]
    assert all(reason for _, reason in failures)
    with pytest.raises(FeaturizationError):
        featurizer.features("")


def test_config_round_trip_and_validation() -> None:
    featurizer = CompositionFeaturizer(descriptors=["magpie", "ion_property"])
    assert featurizer_from_config(featurizer.config.model_dump()) == featurizer
    with pytest.raises(Exception, match="descriptors"):
        CompositionFeaturizer(descriptors=["magpie", "magpie"])


def test_oxide_percentages_become_element_compositions() -> None:
    table = pd.DataFrame(
        {"SiO2": [60.0, 0.0, 50.0], "Na2O": [40.0, 0.0, 45.0], "FemOn": [0.0, 0.0, 5.0], "Tg": [700, 0, 650]}
    )
    compositions, failures, flags = oxide_compositions(table)
    # 0.6 SiO2 + 0.4 Na2O -> Si 0.6, Na 0.8, O 1.2 + 0.4
    expected = Composition({"Si": 0.6, "Na": 0.8, "O": 1.6})
    assert compositions[0].almost_equals(expected)
    assert compositions[1] is None and failures == [(1, "all oxide percentages are zero")]
    assert compositions[2]["Fe"] == pytest.approx(0.05 * 2)  # FemOn taken as Fe2O3
    assert flags == [[], [], []]
    with pytest.raises(UsageError, match="Tg"):
        oxide_compositions(table, columns=["SiO2", "Tg"])


def test_real_glass_table(shared_data) -> None:
    table = pd.read_csv(shared_data / "glass_tg" / "validation_tg.csv").head(500)
    compositions, failures, flags = oxide_compositions(table)
    assert failures == [] and len(compositions) == 500
    assert {el.symbol for c in compositions for el in c.elements} <= {
        el.symbol for oxide in GLASS_OXIDES for el in Composition(oxide.replace("FemOn", "Fe2O3")).elements
    }
    # oxide sums short of 100 % (minor oxides dropped from the data set) are flagged, not hidden
    sums = table[list(GLASS_OXIDES)].sum(axis=1)
    flagged = [bool(f) for f in flags]
    assert flagged == list((sums - 100).abs() > 1.0)


def test_vectorised_magpie_equals_matminer_on_real_formulas(shared_data) -> None:
    from matcard.featurize.composition import magpie_features

    table = pd.read_csv(shared_data / "matbench_composition" / "expt_is_metal.csv")
    formulas = [*table["formula"].sample(150, random_state=0), "He", "Xe2F", "PuO2", "Na0.5Si0.3O1.5"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for impute in (True, False):
            reference = ElementProperty.from_preset("magpie", impute_nan=impute)
            for formula in formulas:
                composition = Composition(formula)
                expected = np.asarray(reference.featurize(composition), dtype=float)
                got = magpie_features(composition, impute_nan=impute)
                np.testing.assert_allclose(
                    got, expected, rtol=1e-10, atol=1e-12, equal_nan=True, err_msg=formula
                )
