"""Rich tables of the ``inspect`` and ``featurize`` summaries (the CLI prints them on stdout)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from matcard.console import escape


def inspect_tables(summary: dict[str, Any], source: str) -> list[Table]:
    """Overview, class counts and the items not read, from :func:`matcard.datasets.inspect.inspect_source`."""
    tables: list[Table] = []
    overview = Table(title=f"inspect {escape(source)}", show_header=False)
    overview.add_column("field")
    overview.add_column("value")
    overview.add_row("kind", summary["kind"])
    overview.add_row("structures" if summary["kind"] == "structures" else "rows", f"{summary['n_rows']:,}")
    overview.add_row("failed", f"{summary['n_failed']:,}")
    if summary["skipped"]:
        overview.add_row("skipped (not structures)", str(len(summary["skipped"])))
    overview.add_row("tasks", escape(", ".join(summary["tasks"]) or "-"))
    if summary.get("given_splits"):
        overview.add_row("given split", ", ".join(f"{k} {v:,}" for k, v in summary["given_splits"].items()))
    if summary.get("flags"):
        overview.add_row("flags", escape(", ".join(f"{k}: {v}" for k, v in summary["flags"].items())))
    if summary["task"]:
        overview.add_row("task", escape(summary["task"]))
        ratio = summary["imbalance_ratio"]
        overview.add_row("imbalance ratio", "-" if ratio is None else f"{ratio:.2f} : 1")
    tables.append(overview)
    if summary["class_counts"]:
        counts = Table(title=f"class counts ({escape(summary['task'])})")
        counts.add_column("class")
        counts.add_column("count", justify="right")
        counts.add_column("share", justify="right")
        total = sum(summary["class_counts"].values()) or 1
        for name, count in summary["class_counts"].items():
            counts.add_row(escape(name), f"{count:,}", f"{100 * count / total:.1f} %")
        tables.append(counts)
    if summary["failures"] or summary["skipped"]:
        problems = Table(title="not read")
        problems.add_column("source", overflow="fold")
        problems.add_column("reason", overflow="fold")
        for item in summary["failures"][:50]:
            problems.add_row(escape(item["source"]), escape(item["reason"]))
        for item in summary["skipped"][:50]:
            problems.add_row(escape(item["source"]), f"[dim]skipped: {escape(item['reason'])}[/]")
        extra = len(summary["failures"]) - 50
        if extra > 0:
            problems.add_row("…", f"{extra} more failures (use --json for all)")
        tables.append(problems)
    return tables


def featurize_tables(
    summary: dict[str, Any], failures: Sequence[Any], read_failures: Sequence[Any], name: str
) -> list[Table]:
    """Failures (featurizer and reader, first 20) and the run's numbers, from a featurize report."""
    tables: list[Table] = []
    rows_failed = [(str(f.position), f.id, f.reason) for f in failures]
    rows_failed += [("read", str(f.source), f.reason) for f in read_failures]
    if rows_failed:
        failed = Table(title=f"failures ({len(rows_failed)})")
        for column in ("#", "id / source", "reason"):
            failed.add_column(column, overflow="fold")
        for row in rows_failed[:20]:
            failed.add_row(*map(escape, row))
        if len(rows_failed) > 20:
            failed.add_row("…", f"{len(rows_failed) - 20} more", "see --json / manifest.json")
        tables.append(failed)
    table = Table(title=f"featurized {escape(name)} ({summary['kind']})")
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    rate = summary["per_second"]
    unreadable = f" (+{summary['read_failures']} unreadable)" if summary["read_failures"] else ""
    rows = [
        ("structures" if summary["kind"] == "graph" else "items", f"{summary['count']:,}"),
        ("inputs", f"{summary['inputs']:,}"),
        ("failures", f"{summary['failures']:,}{unreadable}"),
        *(
            [("mean nodes", f"{summary['mean_nodes']:.1f}"), ("mean edges", f"{summary['mean_edges']:.1f}")]
            if summary["kind"] == "graph"
            else [("features", f"{summary['n_features']:,}")]
        ),
        (
            "flagged",
            f"{summary['flagged']:,}"
            + "".join(f"\n  {flag}: {count:,}" for flag, count in summary["flag_counts"].items()),
        ),
        ("seconds", f"{summary['seconds']:.2f}" + (" (from cache)" if summary["from_cache"] else "")),
        ("per second", f"{rate:,.0f}" if rate else "-"),
        ("path", summary["path"]),
    ]
    if summary["rebuilt_shards"]:
        rows.append(("rebuilt shards", ", ".join(map(str, summary["rebuilt_shards"]))))
    for label, count in (summary.get("class_counts") or {}).items():
        rows.append((f"class {label}", f"{count:,}"))
    for label, value in rows:
        table.add_row(escape(label), escape(value))
    tables.append(table)
    return tables
