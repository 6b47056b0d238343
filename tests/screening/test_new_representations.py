"""Bundles of the new representations screen like any other: a CHGNet-feature MLP trained by
`matcard train --featurizer chgnet`, and the angle-aware model, on real POSCARs and messy CIFs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli import app
from matcard.screening import screen


@pytest.fixture(scope="module")
def chgnet_run(session_data_dir: Path, file_mirror: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("chgnet") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MATCARD_DATA_DIR", str(session_data_dir))
        patch.setenv("MATCARD_MIRROR", file_mirror)
        result = CliRunner().invoke(
            app,
            ["train", "--featurizer", "chgnet", "--model", "mlp", "--loss", "weighted_ce", "--epochs", "4",
             "--out", str(run_dir), "--set", "trainer.threads=1", "--quiet"],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.fixture(scope="module")
def alignn_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ALIGNN-style bundle with seeded weights (screening mechanics, not accuracy)."""
    import torch

    from matcard.bundle import save_bundle
    from matcard.featurize import GraphFeaturizer
    from matcard.models import build_model

    torch.manual_seed(0)
    featurizer = GraphFeaturizer()
    classes = ["small_gap", "large_gap"]
    params = {"hidden": 32, "n_alignn": 1, "n_gcn": 1}
    directory = tmp_path_factory.mktemp("alignn") / "model"
    save_bundle(
        directory,
        build_model("alignn", featurizer.node_dim, 2, **params).eval(),
        model_name="alignn",
        model_params=params,
        in_dim=featurizer.node_dim,
        featurizer_config=featurizer.config.model_dump(),
        class_names=classes,
        class_counts=[10, 10],
        training_stats={"n_train": 20},
    )
    return directory


def _accounted(folder: Path, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = pd.read_csv(out, keep_default_na=False)
    errors = pd.read_csv(out.with_name(out.stem + ".errors.csv"), keep_default_na=False)
    assert (errors["reason"].str.len() > 0).all()
    settled = {s.split("#")[0] for s in [*frame["source"], *errors["source"]]}
    files = {str(p) for p in folder.iterdir() if p.suffix in {".cif", ".mcif", ".vasp"}}
    assert files <= settled, files - settled  # each input predicted or listed with a reason
    return frame, errors


def test_chgnet_run_records_the_pinned_featurizer(chgnet_run: Path) -> None:
    from matcard.bundle import load_model
    from matcard.featurize import ChgnetFeaturizer

    info = json.loads((chgnet_run / "model" / "bundle.json").read_text())
    assert info["featurizer"] == {"kind": "chgnet", "model_version": "0.3.0", "pooling": "crystal"}
    assert info["model"]["name"] == "mlp" and info["model"]["in_dim"] == 64
    model = load_model(chgnet_run)
    assert isinstance(model.featurizer, ChgnetFeaturizer)
    metrics = json.loads((chgnet_run / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["macro_f1"] <= 1.0


def test_chgnet_bundle_screens_poscars_and_messy_cifs(chgnet_run: Path, shared_data: Path, tmp_path: Path):
    from matcard.bundle import load_model
    from matcard.structures import read_structures

    poscars = shared_data / "alignn_sample_poscar"
    screen(chgnet_run / "model", poscars, tmp_path / "p.csv", progress=False)
    frame, errors = _accounted(poscars, tmp_path / "p.csv")
    assert len(frame) + len(errors) == 70 and len(frame) >= 60
    # the screen worker featurizes in batches; predict featurizes one by one: same numbers
    model = load_model(chgnet_run)
    expected = model.predict(read_structures(poscars).records).set_index("id").loc[frame["id"]]
    probs = [f"prob_{c}" for c in model.class_names]
    np.testing.assert_allclose(frame[probs].to_numpy(), expected[probs].to_numpy(), atol=1e-4)

    messy = shared_data / "messy_cifs"
    screen(chgnet_run / "model", messy, tmp_path / "m.csv", progress=False)
    frame, errors = _accounted(messy, tmp_path / "m.csv")
    assert len(frame) > 0 and "disordered" in set(errors["reason"])


def test_alignn_bundle_screens_poscars_and_messy_cifs(alignn_bundle: Path, shared_data: Path, tmp_path: Path):
    poscars = shared_data / "alignn_sample_poscar"
    screen(alignn_bundle, poscars, tmp_path / "p.csv", progress=False)
    frame, errors = _accounted(poscars, tmp_path / "p.csv")
    assert len(frame) == 70 and len(errors) == 0
    np.testing.assert_allclose(frame[["prob_small_gap", "prob_large_gap"]].sum(axis=1), 1.0, atol=1e-5)
    messy = shared_data / "messy_cifs"
    screen(alignn_bundle, messy, tmp_path / "m.csv", progress=False)
    frame, _ = _accounted(messy, tmp_path / "m.csv")
    assert len(frame) > 0
