"""The reader pool: the per-structure limit grows with file size, and a hung or crashing parser in
the middle of a batch fails exactly its own row while every other row is parsed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import matcard.structures.parsers as parsers_module
from cli import app
from matcard.structures import read_structures
from matcard.structures.pool import TIMEOUT_SCALE_BYTES, item_time_limit
from matcard.structures.records import _Item


def test_limit_scales_with_text_and_file_size(tmp_path: Path) -> None:
    small = _Item(kind="cif_text", source="s", text="x" * 100)
    big = _Item(kind="cif_text", source="b", text="x" * (20 * TIMEOUT_SCALE_BYTES))
    (tmp_path / "big.cif").write_text("x" * (4 * TIMEOUT_SCALE_BYTES))
    on_disk = _Item(kind="cif", source="f", path=str(tmp_path / "big.cif"))
    assert item_time_limit(small, 10) == 10
    assert item_time_limit(big, 10) == pytest.approx(200)
    assert item_time_limit(on_disk, 10) == pytest.approx(40)


def _slow(original):  # type: ignore[no-untyped-def]
    def parse(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(1.5)  # the same work for both files: only the size differs
        return original(*args, **kwargs)

    return parse


def test_a_large_file_gets_more_time_than_a_small_one(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parsers_module, "_parse_cif_text", _slow(parsers_module._parse_cif_text))
    text = (shared_data / "cgcnn_sample_classification" / "1000041.cif").read_text()
    (tmp_path / "small.cif").write_text(text)
    padding = "#" + " " * 100 + "\n"  # CIF comments: valid, and the size of a big cell's atom list
    (tmp_path / "large.cif").write_text(text + padding * (5 * TIMEOUT_SCALE_BYTES // len(padding)))
    result = read_structures(tmp_path / "small.cif", tmp_path / "large.cif", timeout=0.5, workers=1)
    assert [r.id for r in result.records] == ["large"]
    (failure,) = result.failures
    assert Path(failure.source).name == "small.cif"
    assert failure.reason.startswith("timeout after 0.5s") and "--timeout" in failure.reason


def test_featurize_and_train_take_timeout_and_the_config_validates_it() -> None:
    from matcard.config import load_config
    from matcard.errors import ConfigError

    runner = CliRunner()
    for command in ("featurize", "train", "inspect", "screen"):
        assert "--timeout" in runner.invoke(app, [command, "--help"]).output
    assert load_config(overrides={"timeout": 60}).data.timeout == 60
    with pytest.raises(ConfigError, match="timeout"):
        load_config(overrides={"data.timeout": -1})


def _hang_or_crash(original, hang: str, crash: str):  # type: ignore[no-untyped-def]
    def parse(text, item_id, *args, **kwargs):  # type: ignore[no-untyped-def]
        if item_id == hang:
            time.sleep(60)
        if item_id == crash:
            os._exit(3)  # a parser that kills its process (segfault-like)
        return original(text, item_id, *args, **kwargs)

    return parse


def test_hang_and_crash_inside_a_batch_fail_only_their_rows(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results travel a batch at a time; the watchdog still blames the exact row that hung or
    crashed, and the finished rows of the killed worker's batch are parsed again, not lost."""
    table = pd.read_csv(shared_data / "mp20_biternary" / "val.csv.gz", nrows=400)
    path = tmp_path / "rows.csv"
    table.to_csv(path, index=False)
    hang, crash = str(table["material_id"][150]), str(table["material_id"][290])
    # Workers are forked, so they inherit the patched parser; the watchdog is the real one.
    patched = _hang_or_crash(parsers_module._parse_cif_text, hang, crash)
    monkeypatch.setattr(parsers_module, "_parse_cif_text", patched)
    started = time.monotonic()
    result = read_structures(path, timeout=2, workers=2)
    assert time.monotonic() - started < 40
    reasons = {failure.source.rsplit("=", 1)[1]: failure.reason for failure in result.failures}
    assert set(reasons) == {"150", "290"}
    assert reasons["150"].startswith("timeout after 2s")
    assert reasons["290"].startswith("parser crashed")
    assert result.ids == [i for i in table["material_id"].astype(str) if i not in {hang, crash}]


class _SeesProperties:
    """A prepare hook that records what the worker saw of the row's other columns."""

    reads_properties = True

    def __call__(self, outcome):  # type: ignore[no-untyped-def]
        if hasattr(outcome, "properties"):
            outcome.label = sorted(outcome.properties)  # the hook's view, carried back on the record
        return outcome


class _IgnoresProperties(_SeesProperties):
    reads_properties = False


def test_table_columns_reach_every_record_however_it_was_parsed(shared_data: Path, tmp_path: Path) -> None:
    """A row's other columns stay in the caller and are attached on return, identical to parsing
    in-process; a prepare hook sees them in the worker unless it says it does not read them."""
    from matcard.structures import iter_structures

    path = tmp_path / "rows.csv"
    pd.read_csv(shared_data / "mp20_biternary" / "val.csv.gz", nrows=120).to_csv(path, index=False)
    inline = read_structures(path, workers=0)
    pooled = read_structures(path, workers=2)
    assert [r.properties for r in pooled.records] == [r.properties for r in inline.records]
    columns = sorted(inline.records[0].properties)
    assert "band_gap" in columns and "cif" not in columns
    seen = [r for r in iter_structures(path, workers=2, prepare=_SeesProperties()) if hasattr(r, "label")]
    assert all(r.label == columns for r in seen) and len(seen) == 120
    blind = list(iter_structures(path, workers=2, prepare=_IgnoresProperties()))
    assert all(r.label == [] and sorted(r.properties) == columns for r in blind)
