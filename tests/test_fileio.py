"""Atomic writers: whole files or nothing, and modes that follow the umask like any other file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from matcard.fileio import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text


@pytest.fixture
def umask() -> Iterator[object]:
    """Set the process umask for one test, then put the previous one back."""
    previous = os.umask(0o022)
    os.umask(previous)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write_every_way(folder: Path) -> list[Path]:
    from matcard.datasets.cache import write_parsed

    atomic_write_bytes(folder / "a.bin", b"\x00\x01")
    atomic_write_text(folder / "b.txt", "text")
    atomic_write_json(folder / "metrics.json", {"f1": 0.5})
    with atomic_path(folder / "plot.png") as tmp:
        tmp.write_bytes(b"png")
    write_parsed(folder / "parsed" / "x.parquet", pd.DataFrame({"id": ["a"]}), None, {"name": "x"})
    return [
        folder / "a.bin",
        folder / "b.txt",
        folder / "metrics.json",
        folder / "plot.png",
        folder / "parsed" / "x.parquet",
        folder / "parsed" / "x.parquet.json",
    ]


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path: Path, umask, mask: int, expected: int) -> None:
    umask(mask)
    for path in _write_every_way(tmp_path):
        assert _mode(path) == expected, path.name
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_failed_write_leaves_neither_target_nor_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
