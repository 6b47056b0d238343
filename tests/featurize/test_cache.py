from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader

from matcard.featurize import FeatureStore, ShardedGraphDataset, featurize_items


def _same_graphs(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in ("x", "z", "edge_index", "edge_dist", "edge_offset"):
            assert torch.equal(x[key], y[key])


@pytest.fixture
def items(mp20_items):
    return mp20_items[:120]


def test_second_run_is_served_from_the_cache(items, tmp_path: Path) -> None:
    first = featurize_items(items, "graph", out=tmp_path / "store", jobs=1, shard_size=50, progress=False)
    assert not first.from_cache and first.built == 120 and len(first.store) == 120
    assert sorted(p.name for p in (tmp_path / "store").iterdir() if not p.name.startswith(".")) == [
        "manifest.json",
        "shard-00000.npz",
        "shard-00001.npz",
        "shard-00002.npz",
    ]
    second = featurize_items(items, "graph", out=tmp_path / "store", jobs=1, shard_size=50, progress=False)
    assert second.from_cache and second.built == 0
    _same_graphs(first.load(), second.load())
    # the stored graphs are exactly what the featurizer builds directly
    _same_graphs(second.load()[:5], [first.featurizer(s) for _, s in items[:5]])


def test_truncated_shard_is_rebuilt_not_trusted(items, tmp_path: Path) -> None:
    out = tmp_path / "store"
    reference = featurize_items(items, "graph", out=out, jobs=1, shard_size=50, progress=False).load()
    shard = out / "shard-00001.npz"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    again = featurize_items(items, "graph", out=out, jobs=1, shard_size=50, progress=False)
    assert not again.from_cache and again.rebuilt_shards == [1] and again.built == 50
    _same_graphs(again.load(), reference)


def test_corrupted_bytes_of_the_same_size_are_detected(items, tmp_path: Path) -> None:
    out = tmp_path / "store"
    featurize_items(items, "graph", out=out, jobs=1, shard_size=50, progress=False)
    shard = out / "shard-00002.npz"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    again = featurize_items(items, "graph", out=out, jobs=1, shard_size=50, progress=False)
    assert again.rebuilt_shards == [2]


def test_corrupt_manifest_and_interrupted_runs_resume(items, tmp_path: Path) -> None:
    out = tmp_path / "store"
    featurize_items(items, "graph", out=out, jobs=1, shard_size=50, progress=False)
    # an interrupted run: the last shard never got written
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][:2]
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "shard-00002.npz").unlink()
    resumed = featurize_items(items, "graph", out=out, jobs=1, shard_size=50, progress=False)
    assert resumed.built == 20 and len(resumed.store) == 120 and resumed.store.complete
    # a manifest that is not JSON at all: everything is rebuilt
    (out / "manifest.json").write_text("{ truncated")
    rebuilt = featurize_items(items, "graph", out=out, jobs=1, shard_size=50, progress=False)
    assert rebuilt.built == 120 and len(rebuilt.store) == 120


def test_key_changes_with_the_featurizer_config(items, tmp_path: Path) -> None:
    a = featurize_items(items[:20], {"kind": "graph", "cutoff": 6.0}, progress=False, jobs=1)
    b = featurize_items(items[:20], {"kind": "graph", "cutoff": 7.0}, progress=False, jobs=1)
    c = featurize_items(items[:20], {"kind": "graph", "cutoff": 6.0}, progress=False, jobs=1)
    assert a.store.key != b.store.key and a.store.path != b.store.path
    assert c.from_cache and c.store.path == a.store.path
    # the default location is under MATCARD_DATA_DIR (isolated per test session)
    assert "features" in a.store.path.parts


def test_failures_are_recorded_and_the_rest_is_stored(items, tmp_path: Path) -> None:
    from pymatgen.core import Lattice, Structure

    broken = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0, 0, 0.001]])
    mixed = [*items[:10], ("broken", broken), ("missing", None), *items[10:20]]
    report = featurize_items(mixed, "graph", out=tmp_path / "s", jobs=1, shard_size=8, progress=False)
    assert len(report.store) == 20
    assert {(f.id, f.position) for f in report.failures} == {("broken", 10), ("missing", 11)}
    assert all(f.reason for f in report.failures)
    reopened = FeatureStore.read(tmp_path / "s")
    assert [f.id for f in reopened.failures] == ["broken", "missing"]
    assert 10 not in reopened.positions() and len(reopened.ids()) == 20
    # positions derived from the manifest agree with those stored inside the shards
    stored = np.concatenate([reopened.load_shard(i)["position"] for i in sorted(reopened.shards)])
    assert reopened.positions().tolist() == stored.tolist()


def test_labels_are_attached_by_input_position(items, tmp_path: Path) -> None:
    report = featurize_items(items[:30], "graph", out=tmp_path / "s", jobs=1, shard_size=16, progress=False)
    labels = np.arange(30) % 3
    graphs = report.store.load(labels)
    assert [int(g.y) for g in graphs] == list(labels)


def test_sharded_stream_visits_every_item_once(items, tmp_path: Path) -> None:
    report = featurize_items(items[:100], "graph", out=tmp_path / "s", jobs=1, shard_size=16, progress=False)
    labels = np.arange(100)  # y = input position, to see which items were streamed
    dataset = ShardedGraphDataset(report.store, labels, shuffle=True, seed=1)
    seen = []
    for batch in DataLoader(dataset, batch_size=32, num_workers=2):
        assert batch.edge_index.max() < batch.num_nodes
        seen += batch.y.tolist()
    assert sorted(seen) == list(range(100)) and seen != list(range(100))
    # a split: only the requested positions, across two "ranks"
    train = np.arange(0, 100, 2)
    ranks = [ShardedGraphDataset(report.store, labels, positions=train, rank=r, world_size=2) for r in (0, 1)]
    streamed = [int(g.y) for ds in ranks for g in ds]
    assert sorted(streamed) == list(train)
    # an odd count: ranks still get equal numbers (one item repeated), with 2 loader workers each
    odd = np.arange(0, 99, 3)  # 33 items
    per_rank = []
    for r in (0, 1):
        ds = ShardedGraphDataset(report.store, labels, positions=odd, rank=r, world_size=2, shuffle=True)
        ys = [y for batch in DataLoader(ds, batch_size=8, num_workers=2) for y in batch.y.tolist()]
        assert len(ys) == len(ds) == 17
        per_rank.append(ys)
    assert set(per_rank[0]).isdisjoint(per_rank[1]) and set(per_rank[0]) | set(per_rank[1]) == set(odd)


def test_composition_store_gives_a_matrix(tmp_path: Path) -> None:
    formulas = [(f"g{i}", f) for i, f in enumerate(["NaCl", "SiO2", "Fe2O3", "Xx", "LiF"])]
    report = featurize_items(formulas, "composition", out=tmp_path / "c", jobs=1, progress=False)
    matrix, positions = report.store.matrix()
    assert matrix.shape[0] == 4 and positions.tolist() == [0, 1, 2, 4]
    assert [f.id for f in report.failures] == ["g3"]
    assert tuple(report.load()[0].x.shape) == (1, matrix.shape[1])


def test_a_second_writer_waits_for_the_first_then_loads_its_work(items, tmp_path: Path) -> None:
    import threading
    import time

    from matcard.featurize.cache import store_lock

    out = tmp_path / "store"
    events: list[str] = []
    with store_lock(out):  # another process is featurizing into this folder
        worker = threading.Thread(
            target=lambda: events.append(
                "cached"
                if featurize_items(items[:10], "graph", out=out, jobs=1, progress=False).from_cache
                else "built"
            )
        )
        worker.start()
        time.sleep(0.5)
        assert events == [] and worker.is_alive()  # blocked on the lock
        events.append("released")
    worker.join(timeout=60)
    assert events == ["released", "built"]
    # stale temp files of a killed writer are cleared when the store is opened
    (out / ".shard-00000.npz.abc.tmp").write_bytes(b"partial")
    assert featurize_items(items[:10], "graph", out=out, jobs=1, progress=False).from_cache
    assert not list(out.glob(".*.tmp"))


def test_rebuilt_shards_are_announced_on_stderr(items, tmp_path: Path, capfd) -> None:
    out = tmp_path / "store"
    featurize_items(items, "graph", out=out, jobs=1, shard_size=50, progress=False)
    capfd.readouterr()
    shard = out / "shard-00001.npz"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    (out / "shard-00002.npz").write_bytes(b"short")
    again = featurize_items(items, "graph", out=out, jobs=1, shard_size=50, progress=False)
    assert again.rebuilt_shards == [1, 2]
    lines = capfd.readouterr().err.strip().splitlines()
    assert lines == [
        f"feature shard {shard} is damaged (sha256 mismatch); rebuilding it",
        f"feature shard {out / 'shard-00002.npz'} is damaged (5 bytes, "
        f"{again.store.shards[2].bytes} expected); rebuilding it",
    ]
    featurize_items(items, "graph", out=out, jobs=1, shard_size=50, progress=False)
    assert capfd.readouterr().err == ""  # a sound store loads silently
    (out / "manifest.json").write_text("{ truncated")
    featurize_items(items, "graph", out=out, jobs=1, shard_size=50, progress=False)
    err = capfd.readouterr().err
    assert "manifest.json is corrupt" in err and "rebuilding the feature store" in err
