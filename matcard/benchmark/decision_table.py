"""The study's second table: argmax against tuned decisions, calibration and conformal coverage.

One row per entry whose cells carry a decision layer (matcard.decision): macro-F1 and minority
recall argmax -> tuned with the paired CI of tuned vs argmax (same loss), the paired CI of this
loss-with-tuning against the baseline-with-tuning (which *recipe* wins), ECE before -> after
temperature scaling, and the test coverage of the conformal sets per class (mean over seeds)
with the mean set size. Entries without a decision layer (older cells, synthetic studies) are left
out; a study with none gives no table.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from matcard.benchmark.decisions import COVERAGE_PREFIX

if TYPE_CHECKING:
    from matcard.benchmark.summary import BenchmarkResult


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _arrow(before: float | None, after: float | None) -> str:
    return f"{_number(before)} → {_number(after)}"


def _interval(row: dict[str, Any], key: str, delta: float | None = None) -> str:
    low, high = row.get(key) or (math.nan, math.nan)
    if low is None or not math.isfinite(low):
        return "n/a"
    point = "" if delta is None or not math.isfinite(delta) else f"{delta:+.3f} "
    return f"{point}[{low:+.3f}, {high:+.3f}]"


def _delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def _coverage(row: dict[str, Any], class_names: list[str]) -> str:
    parts = [
        f"{name} {_number(row.get(f'{COVERAGE_PREFIX}{name}'), 2)}"
        for name in class_names
        if row.get(f"{COVERAGE_PREFIX}{name}") is not None
    ]
    return ", ".join(parts) if parts else "n/a"


def decision_rows(result: BenchmarkResult) -> tuple[list[str], list[list[str]]]:
    """Header and text cells of the decisions table (empty rows when no entry has a decision layer)."""
    baseline = result.config.baseline
    alpha_note = "conformal coverage per class (test, mean over seeds)"
    header = [
        "loss", "macro-F1 argmax → tuned", "Δ tuned vs argmax [CI]", "minority recall argmax → tuned",
        "Δ recall [CI]", f"tuned vs {baseline} tuned [CI]", "ECE before → after", alpha_note,
        "set size",
    ]  # fmt: skip
    rows = []
    baseline_row = next((row for row in result.summary if row["loss"] == baseline), {})
    for row in result.summary:
        if row.get("tuned_macro_f1") is None:
            continue
        against_baseline = (
            "(baseline)" if row["loss"] == baseline
            else _interval(row, "macro_f1_tuned_vs_baseline_tuned_ci",
                           _delta(row.get("tuned_macro_f1"), baseline_row.get("tuned_macro_f1")))
        )  # fmt: skip
        rows.append([
            row["loss"],
            _arrow(row.get("macro_f1"), row.get("tuned_macro_f1")),
            _interval(row, "macro_f1_tuned_vs_argmax_ci",
                      _delta(row.get("tuned_macro_f1"), row.get("macro_f1"))),
            _arrow(row.get("minority_recall"), row.get("tuned_minority_recall")),
            _interval(row, "minority_recall_tuned_vs_argmax_ci",
                      _delta(row.get("tuned_minority_recall"), row.get("minority_recall"))),
            against_baseline,
            _arrow(row.get("ece_before"), row.get("ece_after")),
            _coverage(row, result.class_names),
            _number(row.get("conformal_set_size"), 2),
        ])  # fmt: skip
    return header, rows


def decision_markdown(result: BenchmarkResult) -> str:
    """The decisions table in markdown, or "" when no entry has a decision layer."""
    header, rows = decision_rows(result)
    if not rows:
        return ""
    lines = [
        "Decisions (test): argmax vs the decision layer tuned on val, temperature scaling, conformal sets",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join([f"`{cells[0]}`", *cells[1:]]) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def decision_rich_table(result: BenchmarkResult) -> Any | None:
    """The same table for the terminal, or None when no entry has a decision layer."""
    from rich.table import Table

    header, rows = decision_rows(result)
    if not rows:
        return None
    table = Table(title=f"{result.config.name}: argmax vs tuned decisions (test)")
    for index, name in enumerate(header):
        table.add_column(name, justify="left" if index in (0, 7) else "right")
    for cells in rows:
        table.add_row(*cells)
    return table
