"""The Rich summary a screen ends with (predicted counts per class, failures, speed, files)."""

from __future__ import annotations

from rich.table import Table

from matcard.console import escape
from matcard.screening.pipeline import ScreenResult


def summary_table(result: ScreenResult) -> Table:
    table = Table(title="screening summary", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_column("share", justify="right")
    total = result.n_predicted + result.n_failed
    for name, count in result.class_counts.items():
        table.add_row(f"predicted {escape(name)}", f"{count:,}", _share(count, result.n_predicted))
    table.add_section()
    table.add_row("predicted (total)", f"{result.n_predicted:,}", _share(result.n_predicted, total))
    table.add_row("flagged", f"{result.n_flagged:,}", _share(result.n_flagged, result.n_predicted))
    for name, count in list(result.flag_counts.items())[:6]:
        table.add_row(f"  {escape(name)}", f"{count:,}", _share(count, result.n_predicted))
    table.add_row("failed", f"{result.n_failed:,}", _share(result.n_failed, total))
    for reason, count in list(result.failure_reasons.items())[:5]:
        table.add_row(f"  {escape(reason)}", f"{count:,}", "")
    if result.shortlist_path is not None:
        table.add_row("shortlist", f"{result.shortlist_size:,}", "")
    table.add_section()
    if result.n_resumed:
        table.add_row("resumed (done earlier)", f"{result.n_resumed:,}", "")
    table.add_row("processed this run", f"{result.n_processed:,}", "")
    table.add_row("seconds", f"{result.seconds:.1f}", "")
    table.add_row("structures / s", f"{result.per_second:.1f}", "")
    table.add_row("backend", result.backend, "")
    if result.out is not None:
        table.add_section()
        table.add_row("results", escape(result.out), "")
        table.add_row("errors", escape(result.errors_path), "")
        if result.shortlist_path is not None:
            table.add_row("shortlist file", escape(result.shortlist_path), "")
    return table


def _share(count: int, total: int) -> str:
    return f"{100.0 * count / total:.1f} %" if total else "-"


def nothing_predicted(result: ScreenResult, shown: int = 5) -> str | None:
    """Why a screen predicted no row at all (a failed run, exit 1), or None when it predicted some."""
    if result.n_predicted:
        return None
    if not result.n_failed:
        return "nothing was predicted: the inputs hold no structures"
    reasons = list(result.failure_reasons.items())
    summary = "; ".join(f"{reason} ({count:,})" for reason, count in reasons[:shown])
    where = f"; see {result.errors_path}" if result.errors_path is not None else ""
    return f"nothing was predicted: all {result.n_failed:,} input(s) failed: {summary}{where}"
