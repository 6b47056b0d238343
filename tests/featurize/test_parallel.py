from __future__ import annotations

from pathlib import Path

import pytest
import torch

from matcard.featurize import featurize_items
from matcard.featurize.parallel import resolve_jobs, run_featurization


def test_two_worker_processes_give_the_same_graphs_in_order(mp20_items, tmp_path: Path) -> None:
    items = mp20_items[:200]
    serial = featurize_items(items, "graph", out=tmp_path / "a", jobs=1, shard_size=64, progress=False)
    parallel = featurize_items(
        items, "graph", out=tmp_path / "b", jobs=2, shard_size=64, chunk_size=16, progress=False
    )
    assert parallel.store.ids() == [item_id for item_id, _ in items]
    for a, b in zip(serial.load(), parallel.load(), strict=True):
        for key in ("x", "z", "edge_index", "edge_dist", "edge_offset"):
            assert torch.equal(a[key], b[key])


def test_chunks_come_back_in_input_order_with_per_item_failures(mp20_items) -> None:
    from matcard.featurize.graph import GraphFeaturizer

    items = [*mp20_items[:30], ("none", None), *mp20_items[30:45]]
    chunks = list(run_featurization(GraphFeaturizer(), items, jobs=2, chunk_size=7))
    assert [c.start for c in chunks] == list(range(0, len(items), 7))
    positions = sorted(
        [r.position for c in chunks for r in c.results] + [f.position for c in chunks for f in c.failures]
    )
    assert positions == list(range(len(items)))
    failures = [f for c in chunks for f in c.failures]
    assert [(f.id, f.position) for f in failures] == [("none", 30)]


def test_jobs_validation() -> None:
    assert resolve_jobs(None) >= 1 and resolve_jobs(0) == resolve_jobs(None) and resolve_jobs(3) == 3
    with pytest.raises(Exception, match="jobs"):
        resolve_jobs(-2)


@pytest.mark.slow
def test_every_messy_cif_featurizes_or_carries_a_reason(shared_data: Path, tmp_path: Path) -> None:
    from matcard.structures import read_structures

    folder = shared_data / "messy_cifs"
    read = read_structures(folder, disorder="keep")
    items = [(record.id, record.structure) for record in read.records]
    report = featurize_items(items, "graph", out=tmp_path / "messy", jobs=2, shard_size=8, progress=False)
    featurized = set(report.store.ids())
    failed = {f.id: f.reason for f in report.failures}
    assert featurized | set(failed) == {item_id for item_id, _ in items}
    assert all(reason.strip() for reason in failed.values())
    assert all(f.reason.strip() for f in read.failures)
    # every file in the folder is accounted for: a record that featurized, or a reason
    accounted = {Path(r.source.split("#")[0]).name for r in read.records} | {
        Path(f.source.split("#")[0]).name for f in read.failures
    }
    cif_files = {p.name for p in folder.iterdir() if p.suffix in (".cif", ".mcif")}
    assert cif_files <= accounted
    # disordered structures kept by the reader get occupancy-weighted node features, flagged
    disordered = [r.id for r in read.records if "disordered_kept" in r.flags and r.id in featurized]
    assert disordered and all("disordered_weighted_features" in report.store.flags[i] for i in disordered)
    assert len(featurized) >= 20
