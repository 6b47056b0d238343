"""Shard planning and the crash-safe shard store (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from matcard.errors import ConfigError, UsageError
from matcard.screening.shards import (
    ERROR_SCHEMA,
    ShardPlanner,
    ShardStore,
    item_key,
    plan_shards,
    prediction_schema,
)

CLASSES = ["cubic", "hexagonal"]


def _results(seqs: list[int], prefix: str = "s") -> pa.Table:
    n = len(seqs)
    return pa.Table.from_pydict(
        {
            "seq": seqs,
            "id": [f"{prefix}{s}" for s in seqs],
            "source": [f"file.csv:row {s}" for s in seqs],
            "predicted_class": ["cubic"] * n,
            "argmax_class": ["cubic"] * n,
            "prob_cubic": [0.75] * n,
            "prob_hexagonal": [0.25] * n,
            "max_prob": [0.75] * n,
            "flags": [""] * n,
        },
        schema=prediction_schema(CLASSES),
    )


def _errors(seqs: list[int]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"seq": s, "id": "", "source": f"bad{s}.cif", "reason": "parse error", "detail": ""} for s in seqs],
        schema=ERROR_SCHEMA,
    )


def _store(directory: Path, **fingerprint: object) -> ShardStore:
    return ShardStore(directory, {"model": "m", "inputs": ["a"], **fingerprint}, prediction_schema(CLASSES))


# --------------------------------------------------------------------------- planner


def test_planner_balances_atoms_not_structure_counts() -> None:
    sizes = [2] * 40 + [100] + [4] * 10
    shards = plan_shards(sizes, target_atoms=20)
    assert [i for shard in shards for i in shard] == list(range(len(sizes)))  # every item once, in order
    totals = [sum(sizes[i] for i in shard) for shard in shards]
    assert [100] in [[sizes[i] for i in shard] for shard in shards]  # the big cell sits alone
    small = [t for t, shard in zip(totals, shards, strict=True) if max(sizes[i] for i in shard) < 100]
    assert all(t <= 20 + 4 for t in small[:-1])  # each full shard overshoots by at most one item
    assert all(t >= 20 for t in small[:-1])
    counts = [len(shard) for shard in shards]
    assert max(counts) > 2 * min(c for c in counts[:-1])  # balanced by atoms, so counts differ


def test_planner_streaming_flush_and_validation() -> None:
    planner = ShardPlanner(target_atoms=10, max_items=3)
    assert planner.add("a", 1) is None
    assert planner.add("b", 1) is None
    assert planner.add("c", 1) == ["a", "b", "c"]  # max_items closes the shard
    assert planner.flush() is None
    planner.add("d", 1)
    assert planner.pending == 1
    assert planner.flush() == ["d"]
    with pytest.raises(UsageError):
        ShardPlanner(target_atoms=0)


def test_item_key_distinguishes_id_and_source() -> None:
    assert item_key("a", "x") == item_key("a", "x")
    assert item_key("a", "x") != item_key("a", "y")
    assert item_key("ab", "c") != item_key("a", "bc")


# --------------------------------------------------------------------------- store


def test_commit_and_resume_reports_finished_keys(tmp_path: Path) -> None:
    store = _store(tmp_path / "parts")
    store.open(resume=False, overwrite=False)
    store.commit(0, _results([0, 1, 2]), _errors([3]))
    store.commit(1, _results([4, 5]), _errors([]))

    reopened = _store(tmp_path / "parts")
    reopened.open(resume=True, overwrite=False)
    assert reopened.next_index == 2
    assert reopened.committed_items == 6
    expected = {item_key(f"s{s}", f"file.csv:row {s}") for s in (0, 1, 2, 4, 5)} | {item_key("", "bad3.cif")}
    assert reopened.finished_keys() == expected
    assert not (tmp_path / "parts" / "shard-000001.errors.parquet").exists()  # no empty error parts


def test_resume_drops_parts_the_manifest_never_recorded(tmp_path: Path) -> None:
    """A kill between a part's rename and the manifest update must not count that part."""
    directory = tmp_path / "parts"
    store = _store(directory)
    store.open(resume=False, overwrite=False)
    store.commit(0, _results([0, 1]), _errors([]))
    manifest_before = (directory / "manifest.json").read_text()
    store.commit(1, _results([2, 3]), _errors([4]))
    # simulate the kill: manifest rolled back to before shard 1, part files of shard 1 still there
    (directory / "manifest.json").write_text(manifest_before)
    (directory / ".shard-000002.parquet.abc.tmp").write_bytes(b"half written")
    (directory / "notes.txt").write_text("user file")

    reopened = _store(directory)
    reopened.open(resume=True, overwrite=False)
    assert reopened.finished_keys() == {item_key(f"s{s}", f"file.csv:row {s}") for s in (0, 1)}
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["inputs.json", "manifest.json", "notes.txt", "shard-000000.parquet"]
    assert reopened.next_index == 1
    reopened.commit(1, _results([2, 3]), _errors([4]))  # redoing shard 1 works
    rows = [t["id"].to_pylist() for t in reopened.iter_results()]
    assert rows == [["s0", "s1"], ["s2", "s3"]]


def test_unfinished_state_needs_resume_or_overwrite(tmp_path: Path) -> None:
    store = _store(tmp_path / "parts")
    store.open(resume=False, overwrite=False)
    _store(tmp_path / "parts").open(resume=False, overwrite=False)  # nothing committed: nothing to lose
    store.commit(0, _results([0]), _errors([]))
    with pytest.raises(UsageError, match="--resume"):
        _store(tmp_path / "parts").open(resume=False, overwrite=False)
    fresh = _store(tmp_path / "parts")
    fresh.open(resume=False, overwrite=True)
    assert fresh.finished_keys() == set()
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["inputs.json", "manifest.json"]


def test_resume_with_other_settings_fails_naming_the_field(tmp_path: Path) -> None:
    store = _store(tmp_path / "parts")
    store.open(resume=False, overwrite=False)
    store.commit(0, _results([0]), _errors([]))
    other = ShardStore(tmp_path / "parts", {"model": "other", "inputs": ["a"]}, prediction_schema(CLASSES))
    with pytest.raises(ConfigError, match="model"):
        other.open(resume=True, overwrite=False)


def test_damaged_state_is_reported(tmp_path: Path) -> None:
    store = _store(tmp_path / "parts")
    store.open(resume=False, overwrite=False)
    store.commit(0, _results([0]), _errors([]))
    (tmp_path / "parts" / "shard-000000.parquet").unlink()
    with pytest.raises(UsageError, match="damaged"):
        _store(tmp_path / "parts").open(resume=True, overwrite=False)
    (tmp_path / "parts" / "manifest.json").write_text("{not json")
    with pytest.raises(UsageError, match="manifest"):
        _store(tmp_path / "parts").open(resume=True, overwrite=False)


def test_parts_come_back_in_input_order(tmp_path: Path) -> None:
    store = _store(tmp_path / "parts")
    store.open(resume=False, overwrite=False)
    store.commit(0, _results([10, 11]), _errors([]))  # shards finish out of order
    store.commit(1, _results([1, 0]), _errors([2]))
    assert [t["seq"].to_pylist() for t in store.iter_results()] == [[0, 1], [10, 11]]
    assert [t["seq"].to_pylist() for t in store.iter_errors()] == [[2]]
    manifest = json.loads((tmp_path / "parts" / "manifest.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [2, 2]
    store.remove()
    assert not (tmp_path / "parts").exists()


def test_resume_with_changed_input_files_names_them(tmp_path: Path) -> None:
    listing = [("/in/a.cif", 10, 1), ("/in/b.cif", 20, 2), ("/in/c.cif", 30, 3)]
    store = ShardStore(
        tmp_path / "parts", {"model": "m", "input_files": "x"}, prediction_schema(CLASSES), listing
    )
    store.open(resume=False, overwrite=False)
    store.commit(0, _results([0]), _errors([]))
    changed = [("/in/a.cif", 10, 1), ("/in/c.cif", 31, 4), ("/in/d.cif", 5, 5)]
    other = ShardStore(
        tmp_path / "parts", {"model": "m", "input_files": "y"}, prediction_schema(CLASSES), changed
    )
    with pytest.raises(ConfigError) as refused:
        other.open(resume=True, overwrite=False)
    message = str(refused.value)
    assert "1 file(s) added (e.g. /in/d.cif)" in message
    assert "1 file(s) removed (e.g. /in/b.cif)" in message
    assert "1 file(s) modified (e.g. /in/c.cif)" in message
