"""Screening from the reader's arrays gives exactly what screening from pymatgen Structures gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from matcard.featurize import GraphFeaturizer
from matcard.featurize.graph import StructureArrays
from matcard.screening import screen
from matcard.screening.backends import InProcessBackend, ProcessBackend
from matcard.screening.inputs import reader_hook
from matcard.screening.worker import (
    GraphPreparer,
    PreparedLogits,
    ShardItem,
    ShardTask,
    TrainingDomain,
    domain_flags,
    run_shard,
)
from matcard.structures import iter_structures
from matcard.structures.compact import CompactStructure
from matcard.structures.fastcif import CIF_PARSER_ENV, parse_cif_compact
from matcard.structures.records import CompactRecord


def _compacts(mp20_subset: Path, n: int) -> list[CompactStructure]:
    texts = pd.read_csv(mp20_subset, nrows=n)["cif"]
    return [parse_cif_compact(text)[0] for text in texts]  # type: ignore[index]


def test_graphs_from_arrays_equal_graphs_from_structures(mp20_subset: Path) -> None:
    featurizer = GraphFeaturizer()
    for compact in _compacts(mp20_subset, 60):
        structure = compact.to_structure()
        ours, reference = StructureArrays.from_compact(compact), StructureArrays.from_structure(structure)
        for name in ("lattice", "cart_coords", "numbers", "pbc"):
            assert np.array_equal(getattr(ours, name), getattr(reference, name)), name
        a, b = featurizer.build(ours), featurizer.build(structure)
        for name in ("x", "z", "edge_index", "edge_dist", "edge_offset", "edge_vec"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert a.flags == b.flags


def test_shards_from_arrays_give_the_same_rows_flags_and_errors(
    seeded_bundle: Path, mp20_subset: Path
) -> None:
    from matcard.bundle import load_model

    model = load_model(seeded_bundle)
    domain = TrainingDomain.from_model(model)
    compacts = _compacts(mp20_subset, 120)
    # one item no graph can be built from: two atoms on one position (the error row must match too)
    broken = compacts[0]
    compacts.append(
        CompactStructure(
            broken.lattice,
            np.vstack([broken.frac_coords[:1], broken.frac_coords[:1]]),
            broken.numbers[:1].repeat(2),
            ("A", "B"),
        )
    )
    preparer = GraphPreparer(model.featurizer)
    outputs = []
    for form in ("arrays", "prepared", "structure"):
        items = tuple(
            ShardItem(
                i,
                f"id{i}",
                "src",
                c.to_structure() if form == "structure" else c,
                ("reader_flag",),
                preparer(CompactRecord("x", "s", c)).features if form == "prepared" else None,
            )
            for i, c in enumerate(compacts)
        )
        outputs.append(run_shard(ShardTask(0, items, 32, domain), model))
        assert [domain_flags(item.structure, domain) for item in items[:5]] == [
            domain_flags(c.to_structure(), domain) for c in compacts[:5]
        ]
    arrays, prepared, structures = outputs
    assert arrays.columns == prepared.columns == structures.columns
    assert arrays.errors == prepared.errors == structures.errors and len(arrays.errors) == 1
    assert any("unseen_element" in flags for flags in arrays.columns["flags"])  # flags were exercised


class _FailingModel:
    def predict_logits_data(self, graphs: object) -> object:
        raise RuntimeError("model broke")


def test_graphs_are_built_in_the_reader_only_for_the_in_process_backend(
    seeded_bundle: Path, mp20_subset: Path
) -> None:
    from matcard.bundle import load_model

    model = load_model(seeded_bundle)
    backend = InProcessBackend(model)
    try:
        hook = reader_hook(backend, model)
    finally:
        backend.close()
    assert isinstance(hook, GraphPreparer) and hook.model is model
    assert reader_hook(ProcessBackend.__new__(ProcessBackend), model) is None
    # the reader's workers predicted each batch: the model's own logits on the graphs it would build
    records = list(iter_structures(mp20_subset, workers=1, prepare=hook))[:40]
    assert all(isinstance(r.features, PreparedLogits) for r in records)
    graphs = [model.featurizer.build(StructureArrays.from_compact(r.compact)) for r in records]
    worker_logits = np.stack([r.features.logits for r in records])
    np.testing.assert_allclose(worker_logits, model.predict_logits_data(graphs), rtol=0, atol=1e-5)
    assert [list(r.features.flags) for r in records] == [[str(f) for f in g.flags] for g in graphs]
    # without a model (or when the model fails on a batch) the graphs travel and the shard predicts
    graphs_only = GraphPreparer(model.featurizer)
    failing = GraphPreparer(model.featurizer, model=_FailingModel())
    for prepare in (graphs_only, failing):
        records = list(iter_structures(mp20_subset, workers=1, prepare=prepare))[:20]
        assert all(r.features is not None and r.features.edge_index.size for r in records)
    big = GraphPreparer(model.featurizer, max_atoms=1)(CompactRecord("x", "s", records[0].compact))
    assert big.features is None  # left to the shard

    def broken(outcome: object) -> object:
        raise RuntimeError("hook bug")

    unprepared = list(iter_structures(mp20_subset, workers=1, prepare=broken))[:3]
    assert [r.features for r in unprepared] == [None] * 3  # a failing hook leaves the record as it was


def test_screening_from_arrays_builds_no_structure(
    seeded_bundle: Path, mp20_subset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: CompactStructure) -> None:
        raise AssertionError("a Structure was built")

    monkeypatch.setattr(CompactStructure, "to_structure", refuse)  # forked readers inherit it
    result = screen(seeded_bundle, mp20_subset, workers=1, progress=False)
    assert result.n_predicted == 400 and result.n_failed == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_fast_and_pymatgen_screens_write_the_same_predictions(
    seeded_bundle: Path, mp20_subset: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    results = {}
    for parser in ("fast", "pymatgen"):
        monkeypatch.setenv(CIF_PARSER_ENV, parser)
        results[parser] = screen(seeded_bundle, mp20_subset, workers=workers, progress=False)
    fast, ref = results["fast"], results["pymatgen"]
    pd.testing.assert_frame_equal(fast.predictions, ref.predictions)
    pd.testing.assert_frame_equal(fast.errors, ref.errors)
    assert fast.n_predicted == 400


def test_worker_logits_and_shard_logits_mix_in_order(seeded_bundle: Path, mp20_subset: Path) -> None:
    """A shard holding both records the reader predicted and graphs it must predict itself."""
    from matcard.bundle import load_model
    from matcard.screening.worker import _logits

    model = load_model(seeded_bundle)
    records = list(iter_structures(mp20_subset, workers=0))[:6]
    graphs = [model.featurizer.build(StructureArrays.from_compact(r.compact)) for r in records]
    expected = model.predict_logits_data(graphs)
    mixed = [PreparedLogits(expected[i], ()) if i % 2 else graph for i, graph in enumerate(graphs)]
    # a model's float32 logits may differ in the last bits with the batch's other graphs
    np.testing.assert_allclose(_logits(model, mixed), expected.astype(np.float64), rtol=0, atol=1e-5)
    assert _logits(model, [PreparedLogits(row, ()) for row in expected]).shape == expected.shape


def test_screening_twice_gives_the_same_floats(
    seeded_bundle: Path, mp20_subset: Path, tmp_path: Path
) -> None:
    """The reader's workers predict per batch, and a batch is a fixed block of entries whatever the
    timing: two screens of the same input agree bit for bit."""
    frames = []
    for name in ("a", "b"):
        result = screen(seeded_bundle, mp20_subset, tmp_path / f"{name}.parquet", progress=False)
        frames.append(pd.read_parquet(result.out))
    pd.testing.assert_frame_equal(frames[0], frames[1], check_exact=True)
