"""The parsed-dataset Parquet cache is checked by content: flipped bytes are rebuilt, never loaded."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from matcard.datasets import load_dataset
from matcard.datasets.cache import StructureStore, manifest_path, read_parsed, write_parsed

SEED = 20240611


def _flip(path: Path, position: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[position : position + 4] = bytes(b ^ 0x5A for b in raw[position : position + 4])
    path.write_bytes(bytes(raw))


def _same_store(a: StructureStore, b: StructureStore) -> None:
    np.testing.assert_array_equal(a.lattices, b.lattices)
    np.testing.assert_array_equal(a.frac_coords, b.frac_coords)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert list(a.species) == list(b.species) and a.flags == b.flags


@pytest.fixture(scope="module")
def poscar_dataset(shared_data: Path):
    return load_dataset(shared_data / "alignn_sample_poscar", cache=False, progress=False, workers=0)


def test_every_flipped_byte_position_is_caught(poscar_dataset, tmp_path: Path, capsys) -> None:
    """The reproduction: 4-byte flips at 30 random positions; each one is refused, none loads."""
    path = tmp_path / "parsed" / "poscar-0.parquet"
    write_parsed(path, poscar_dataset.table, poscar_dataset.store, {"name": "poscar"})
    table, store, _ = read_parsed(path)
    pd.testing.assert_frame_equal(table, poscar_dataset.table.reset_index(drop=True))
    _same_store(store, poscar_dataset.store)
    pristine = path.read_bytes()
    rng = random.Random(SEED)
    for position in sorted(rng.sample(range(len(pristine) - 4), 30)):
        path.write_bytes(pristine)
        _flip(path, position)
        assert read_parsed(path) is None, f"flip at byte {position} was loaded"
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is corrupt (sha256 mismatch); rebuilding it" in err
        assert str(path) in err


def test_missing_or_damaged_manifest_is_rebuilt(poscar_dataset, tmp_path: Path, capsys) -> None:
    path = tmp_path / "p.parquet"
    write_parsed(path, poscar_dataset.table, poscar_dataset.store, {"name": "poscar"})
    manifest = json.loads(manifest_path(path).read_text())
    assert manifest["sha256"] and manifest["bytes"] == path.stat().st_size
    manifest_path(path).write_text("{ not json")
    assert read_parsed(path) is None
    assert "manifest is unreadable" in capsys.readouterr().err
    manifest_path(path).unlink()
    assert read_parsed(path) is None
    assert "no checksum manifest" in capsys.readouterr().err
    path.write_bytes(path.read_bytes()[:-10])  # truncated
    assert read_parsed(path) is None


def test_corrupt_structure_cache_is_reparsed_identically(shared_data: Path, tmp_path: Path, capfd) -> None:
    source = shared_data / "alignn_sample_poscar"
    first = load_dataset(source, data_dir=tmp_path, cache=True, progress=False, workers=0)
    (cached,) = (tmp_path / "parsed").glob("*.parquet")
    size = cached.stat().st_size
    rng = random.Random(SEED)
    for position in rng.sample(range(size // 4, size - 4), 3):
        _flip(cached, position)
        again = load_dataset(source, data_dir=tmp_path, cache=True, progress=False, workers=0)
        assert "is corrupt" in capfd.readouterr().err
        pd.testing.assert_frame_equal(again.table, first.table)
        _same_store(again.store, first.store)
        assert again.content_hash == first.content_hash
    # the rebuilt cache is trusted again, silently
    load_dataset(source, data_dir=tmp_path, cache=True, progress=False, workers=0)
    assert "corrupt" not in capfd.readouterr().err


def test_corrupt_registry_cache_is_reparsed_identically(tmp_path: Path, file_mirror: str, capfd) -> None:
    first = load_dataset("matbench-glass", data_dir=tmp_path, mirror=file_mirror, progress=False)
    (cached,) = (tmp_path / "parsed").glob("matbench-glass-*.parquet")
    rng = random.Random(SEED)
    for position in rng.sample(range(cached.stat().st_size - 4), 3):
        _flip(cached, position)
        again = load_dataset("matbench-glass", data_dir=tmp_path, mirror=file_mirror, progress=False)
        err = capfd.readouterr().err
        assert "parsed-dataset cache" in err and "rebuilding it" in err
        pd.testing.assert_frame_equal(again.table, first.table)
