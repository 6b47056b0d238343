"""Rich tables of a run's metrics and of its decision layer (argmax beside tuned), shown by
``matcard train``, ``evaluate`` and ``calibrate``."""

from __future__ import annotations

from typing import Any

from matcard.console import escape


def metrics_tables(metrics: dict[str, Any], title: str) -> list[Any]:
    """Rich tables: headline metrics, and per-class precision / recall / F1 / support."""
    from rich.table import Table

    from matcard.metrics import HEADLINE_METRICS  # here, not at import: sklearn is slow to load

    headline = Table(title=title, title_justify="left")
    headline.add_column("metric")
    headline.add_column("value", justify="right")
    for key in HEADLINE_METRICS:
        value = metrics.get(key)
        headline.add_row(key, "n/a" if value is None else f"{value:.4f}")
    headline.add_row("n_samples", str(metrics.get("n_samples", "")))
    per_class = Table(title="per class", title_justify="left")
    for column in ("class", "support", "precision", "recall", "f1"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for name, row in metrics.get("per_class", {}).items():
        recall = row["recall"]
        per_class.add_row(
            escape(name),
            str(row["support"]),
            f"{row['precision']:.3f}",
            "n/a" if recall is None else f"{recall:.3f}",
            f"{row['f1']:.3f}",
        )
    return [headline, per_class]


def decision_tables(block: dict[str, Any] | None, split: str) -> list[Any]:
    """argmax and tuned side by side for one split of a ``decision`` block (matcard.decision)."""
    from rich.table import Table

    report = (block or {}).get(split) if block else None
    if not report or "tuned" not in report:
        return []
    table = Table(title=f"{split}: argmax vs tuned decision", title_justify="left")
    for column in ("metric", "argmax", "tuned"):
        table.add_column(column, justify="left" if column == "metric" else "right")

    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    for key in ("accuracy", "balanced_accuracy", "macro_f1", "mcc", "gmean", "ece"):
        table.add_row(key, cell(report["argmax"].get(key)), cell(report["tuned"].get(key)))
    for name, row in report["tuned"]["per_class"].items():
        table.add_row(f"recall {escape(name)}", cell(report["argmax"]["per_class"][name]["recall"]),
                      cell(row["recall"]))  # fmt: skip
    layer = block.get("layer") or {}
    rule = layer.get("rule", {})
    conformal = report.get("conformal") or {}
    notes = [
        f"objective {escape(str(layer.get('objective')))}, rule {rule.get('kind')}"
        + (f" ({rule['method']})" if rule.get("method") else "")
        + (f" threshold {rule['threshold']:.4g}" if rule.get("kind") == "threshold" else ""),
        f"temperature {layer.get('temperature', 1.0):.3g}",
    ]
    if conformal:
        notes.append(
            f"conformal alpha {conformal['alpha']:g}: coverage {cell(conformal['coverage'])}, "
            f"min class coverage {cell(conformal.get('min_class_coverage'))}, "
            f"mean set size {cell(conformal['mean_set_size'])}"
            + ("" if conformal.get("guarantee") else " (calibrated on val: no guarantee)")
        )
    if block["flags"]:
        notes.append(f"flags: {escape(', '.join(block['flags']))}")
    table.caption = "; ".join(notes)
    return [table]
