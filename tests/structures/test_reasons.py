"""Parser failures read as short plain sentences; the raw exception is kept in ReadFailure.detail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matcard.structures import ReadFailure, read_structures
from matcard.structures.reasons import plain_reason


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ZeroDivisionError("integer modulo by zero"), "degenerate values in the file"),
        (ValueError("no structure could be built (could not convert string to float: '?x')"),
         "a numeric field holds text '?x'"),
        (NotImplementedError("Incommensurate structures not currently supported."), "unsupported: "),
        (json.JSONDecodeError("Expecting value", "{x", 1), "not valid JSON"),
        (RuntimeError("internal state 0x7f"), "the parser failed (RuntimeError; see detail)"),
    ],
)  # fmt: skip
def test_plain_reason_is_a_sentence_and_keeps_the_raw_exception(exc: BaseException, reason: str) -> None:
    plain, detail = plain_reason(exc)
    assert plain.startswith(reason)
    assert type(exc).__name__ not in plain or "see detail" in plain
    assert detail.startswith(f"{type(exc).__name__}: ")


def test_division_by_zero_in_a_real_cif_is_a_plain_reason(shared_data: Path, tmp_path: Path) -> None:
    text = (shared_data / "cgcnn_sample_classification" / "1000041.cif").read_text()
    (tmp_path / "zero.cif").write_text(text.replace("\nx,y,z\n", "\nx,y,z+1/0\n", 1))
    failure = read_structures(tmp_path / "zero.cif", workers=0).failures[0]
    assert failure.reason.startswith("degenerate values in the file")
    assert failure.detail.startswith("ZeroDivisionError: ")


def test_messy_cif_reasons_are_plain_with_detail(shared_data: Path) -> None:
    folder = shared_data / "messy_cifs"
    files = [folder / n for n in ("bad_superflat_inf_loop.cif", "bad_occu.cif")]
    failures = {Path(f.source).name: f for f in read_structures(*files, workers=1).failures}
    flat, occu = failures["bad_superflat_inf_loop.cif"], failures["bad_occu.cif"]
    assert flat.reason == "the cell is nearly flat (thickness below threshold)"
    assert "thickness=[np.float64(" in flat.detail and flat.detail.startswith("ValueError: ")
    assert occu.reason == "site occupancies sum to 1.556, more than 1"


def test_read_failure_detail_is_optional_and_round_trips() -> None:
    old = ReadFailure("a.cif", "disordered")  # positional construction as before
    assert old.detail == "" and ReadFailure.from_dict({"source": "a.cif", "reason": "x"}).detail == ""
    full = ReadFailure("a.cif", "r", "ValueError: v")
    assert ReadFailure.from_dict(full.to_dict()) == full
