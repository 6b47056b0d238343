"""Reporting: the study description, markdown / Rich tables, CSV / JSON files and plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from matcard.benchmark.decision_table import decision_markdown
from matcard.benchmark.planning import Cell
from matcard.benchmark.schema import (
    LOWER_IS_BETTER,
    METRIC_TITLES,
    PAIRED_METRICS,
    TABLE_METRICS,
    BenchmarkResult,
)
from matcard.fileio import atomic_path, atomic_write_json, atomic_write_text


def _fmt(value: float | None, std: float | None = None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}" if std is None else f"{value:.{digits}f} ± {std:.{digits}f}"


COLLAPSE_MARK = "†"
PAIRED_TITLES = {
    "macro_f1": "macro-F1",
    "minority_recall": "minority recall",
    "pr_auc_minority": "minority PR-AUC",
}


def _fmt_paired(row: dict[str, Any], metric: str, baseline: str, against: str = "baseline") -> str:
    if against == "baseline" and row["loss"] == baseline:
        return "(baseline)"
    value = row.get(f"{metric}_vs_{against}")
    low, high = row.get(f"{metric}_vs_{against}_ci") or (math.nan, math.nan)
    if against == "control" and not row.get("control"):
        return ""
    if value is None or low is None or not math.isfinite(low):
        return "n/a"
    return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"


def _has_controls(result: BenchmarkResult) -> bool:
    return any(row.get("control") for row in result.summary)


def display_label(row: dict[str, Any]) -> str:
    """The entry's label, marked when a seed collapsed to a constant predictor (plots)."""
    return f"{row['loss']} {COLLAPSE_MARK}" if row.get("collapsed") else row["loss"]


def collapse_footnote(result: BenchmarkResult) -> str | None:
    """The table's footnote on collapsed entries, or None when none collapsed."""
    marked = [row for row in result.summary if row.get("collapsed")]
    if not marked:
        return None
    counts = ", ".join(f"`{row['loss']}` {row['collapsed']} of {row['n_seeds']}" for row in marked)
    return (
        f"{COLLAPSE_MARK} collapsed to a constant predictor (>= 99 % of the validation items in one class "
        f"at the selected checkpoint, or for the last 5 epochs of training) in some seeds: {counts}"
    )


def study_description(result: BenchmarkResult) -> list[str]:
    """Dataset, split, seeds, model and hardware, as lines (the header of every table)."""
    config = result.config
    env = result.environment
    data = result.data
    sizes = f"{data.get('n_train')} / {data.get('n_val')} / {data.get('n_test')} train / val / test items"
    lines = []
    if config.kind == "train":
        from matcard.config import load_config

        train = load_config(base=config.train)
        data_cfg = train.data
        if data_cfg.split == "given":
            split = "the published split (test = its held-out file), val carved from the rest by seed"
        else:
            split = (
                f"stratified {1 - data_cfg.val_fraction - data_cfg.test_fraction:.2f} / "
                f"{data_cfg.val_fraction:.2f} / {data_cfg.test_fraction:.2f}, drawn per seed"
            )
        if data_cfg.group_by_formula:
            split += ", grouped by reduced formula"
        if data_cfg.limit:
            split += f", from a stratified subsample of {data_cfg.limit}"
        lines.append(f"dataset: {data.get('dataset')}, task `{data.get('task')}`; split: {split} ({sizes})")
        optim, trainer = train.optim, train.trainer
        params = f" {train.model.params}" if train.model.params else ""
        lines.append(
            f"model: {train.model.name}{params}, featurizer {train.featurizer_kind()}; {optim.optimizer} lr "
            f"{optim.lr:g} ({optim.schedule} schedule), up to {trainer.epochs} epochs, batch "
            f"{trainer.batch_size}, early stopping patience {trainer.patience}; checkpoint selected on val "
            "macro-F1, test used once"
        )
    else:
        majority = config.synthetic.get("majority", 0.5)
        epochs = config.synthetic.get("epochs", 100)
        lines.append(
            "dataset: synthetic make_classification (methods brief §2), 10 classes, majority "
            f"{majority:g}; split: 70 / 30 train / test, val = stratified 15 % of train ({sizes})"
        )
        lines.append(
            f"model: MLP 20-32-10, plain SGD lr 0.01, batch 32, {epochs} epochs (unless the entry says "
            "otherwise); the epoch with the best val macro-F1 is reported on test"
        )
    seeds = ", ".join(str(s) for s in config.seeds)
    lines.append(
        f"seeds: {seeds}; minority class(es): {', '.join(result.minority_classes)}; CI: "
        f"{config.bootstrap.confidence:.0%} paired bootstrap over seeds and test items "
        f"({config.bootstrap.samples} replicates)"
    )
    gpu = f", GPU {env['gpu']}" if env.get("gpu") else ", no GPU"
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines.append(
        f"hardware: {env['cpu']}, {env['cores']} cores{gpu}; {result.workers} cells at a time, "
        f"{config.threads} thread(s) each; matcard {env['matcard']}, {versions}"
    )
    return lines


def _table_rows(result: BenchmarkResult) -> tuple[list[str], list[list[str]], dict[str, float]]:
    """Header and text cells shared by the markdown and the Rich table; best mean per metric."""
    config = result.config
    minority = ", ".join(result.minority_classes)
    if len(result.minority_classes) > 3:
        minority = f"{len(result.minority_classes)} classes"
    titles = {**METRIC_TITLES, "minority_recall": f"minority recall ({minority})"}
    against = ["baseline", "control"] if _has_controls(result) else ["baseline"]
    header = ["loss", *(titles[metric] for metric in TABLE_METRICS)]
    for name in against:
        reference = config.baseline if name == "baseline" else "control"
        header += [f"Δ {PAIRED_TITLES[metric]} vs {reference} [CI]" for metric in PAIRED_METRICS]
    header.append("s / cell")
    best = {}
    for metric in TABLE_METRICS:
        values = [row[metric] for row in result.summary if row[metric] is not None]
        if values:
            best[metric] = min(values) if metric in LOWER_IS_BETTER else max(values)
    rows = []
    for row in result.summary:
        cells = [row["loss"]]
        cells.extend(_fmt(row[metric], row[f"{metric}_std"]) for metric in TABLE_METRICS)
        if row.get("collapsed"):  # on macro-F1, the column a constant predictor makes look plausible
            cells[1] = f"{cells[1]} {COLLAPSE_MARK}"
        for name in against:
            cells.extend(_fmt_paired(row, metric, config.baseline, name) for metric in PAIRED_METRICS)
        cells.append(_fmt(row["seconds"], digits=0))
        rows.append(cells)
    return header, rows, best


def _is_best(row: dict[str, Any], metric: str, best: dict[str, float]) -> bool:
    return row[metric] is not None and metric in best and abs(row[metric] - best[metric]) < 1e-12


def markdown_table(result: BenchmarkResult) -> str:
    """The study's table in markdown; the best mean of each metric in bold."""
    header, rows, best = _table_rows(result)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row, cells in zip(result.summary, rows, strict=True):
        cells = [f"`{cells[0]}`", *cells[1:]]
        for column, metric in enumerate(TABLE_METRICS, start=1):
            if _is_best(row, metric, best):
                cells[column] = f"**{cells[column]}**"
        lines.append("| " + " | ".join(cells) + " |")
    footnote = collapse_footnote(result)
    if footnote:
        lines += ["", footnote]
    return "\n".join(lines) + "\n"


def rich_table(result: BenchmarkResult) -> Any:
    """The same table for the terminal."""
    from rich.table import Table

    header, rows, best = _table_rows(result)
    table = Table(
        title=f"{result.config.name}: test metrics, mean ± std over {len(result.config.seeds)} seeds"
    )
    for index, name in enumerate(header):
        table.add_column(name, justify="left" if index == 0 else "right")
    for row, cells in zip(result.summary, rows, strict=True):
        for column, metric in enumerate(TABLE_METRICS, start=1):
            if _is_best(row, metric, best):
                cells[column] = f"[bold]{cells[column]}[/]"
        table.add_row(*cells)
    return table


def write_outputs(result: BenchmarkResult, cells: Sequence[Cell], suffix: str = "") -> dict[str, Path]:
    """summary.csv, per_seed.csv, results.json, table.md and the plots (all atomic; ``suffix`` is
    added to each name)."""
    import pandas as pd

    out = result.out_dir
    names = {
        "summary": "summary.csv",
        "per_seed": "per_seed.csv",
        "json": "results.json",
        "table": "table.md",
        "metrics_plot": "metrics.png",
        "recall_plot": "per_class_recall.png",
        "paired_plot": "paired_vs_baseline.png",
    }
    files = {key: out / f"{Path(name).stem}{suffix}{Path(name).suffix}" for key, name in names.items()}
    summary = pd.DataFrame(result.summary)
    for metric in PAIRED_METRICS:
        for against in ("baseline", "control"):
            column = f"{metric}_vs_{against}_ci"
            summary[f"{metric}_vs_{against}_low"] = [ci[0] for ci in summary[column]]
            summary[f"{metric}_vs_{against}_high"] = [ci[1] for ci in summary[column]]
            summary = summary.drop(columns=column)
    atomic_write_text(files["summary"], summary.to_csv(index=False))
    atomic_write_text(files["per_seed"], pd.DataFrame(result.per_seed).to_csv(index=False))
    atomic_write_json(
        files["json"],
        {
            "study": result.config.model_dump(mode="json"),
            "description": study_description(result),
            "minority_classes": result.minority_classes,
            "class_names": result.class_names,
            "environment": result.environment,
            "summary": _json_safe(result.summary),
            "per_seed": _json_safe(result.per_seed),
            "cells": {f"{c.label}/seed{c.seed}": str(c.directory) for c in cells},
        },
    )
    title = f"## {result.config.name}\n\n" + "".join(f"- {line}\n" for line in study_description(result))
    decisions = decision_markdown(result)
    atomic_write_text(
        files["table"], title + "\n" + markdown_table(result) + ("\n" + decisions if decisions else "")
    )
    plot_metrics(result, files["metrics_plot"])
    plot_recall_heatmap(result, files["recall_plot"])
    plot_paired(result, files["paired_plot"])
    return files


def _json_safe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return [{k: clean(v) for k, v in row.items()} for row in rows]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> None:
    """Lay out, write atomically, and free the figure."""
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    _pyplot().close(figure)


def plot_metrics(result: BenchmarkResult, path: Path) -> None:
    """One panel per table metric: a bar per loss, error bars = std over seeds."""
    plt = _pyplot()
    labels = [display_label(row) for row in result.summary]
    positions = np.arange(len(labels))
    figure, axes = plt.subplots(
        1, len(TABLE_METRICS), figsize=(3.2 * len(TABLE_METRICS), 0.32 * len(labels) + 1.6)
    )
    for axis, metric in zip(np.atleast_1d(axes), TABLE_METRICS, strict=True):
        means = np.array([np.nan if r[metric] is None else r[metric] for r in result.summary])
        stds = np.array([r[f"{metric}_std"] or 0.0 for r in result.summary])
        colours = [
            "tab:orange" if r["loss"] == result.config.baseline else "tab:blue" for r in result.summary
        ]
        colours = [
            "tab:green" if r["name"] in ("magnitude", "spread") and r["loss"] != result.config.baseline else c
            for r, c in zip(result.summary, colours, strict=True)
        ]
        axis.barh(positions, np.nan_to_num(means), xerr=stds, color=colours, alpha=0.85, capsize=2)
        baseline = next(r[metric] for r in result.summary if r["loss"] == result.config.baseline)
        if baseline is not None:
            axis.axvline(baseline, color="tab:orange", linestyle="--", linewidth=1)
        axis.set_title(METRIC_TITLES[metric] + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
        axis.set_yticks(positions, labels if axis is np.atleast_1d(axes)[0] else [""] * len(labels))
        axis.invert_yaxis()
        axis.grid(axis="x", alpha=0.3)
    figure.suptitle(f"{result.config.name}: test metrics, mean ± std over seeds {result.config.seeds}")
    _save(figure, path)


def plot_recall_heatmap(result: BenchmarkResult, path: Path) -> None:
    """Per-class test recall (mean over seeds): losses x classes."""
    plt = _pyplot()
    labels = [display_label(row) for row in result.summary]
    matrix = np.array(
        [
            [
                np.nan if row[f"recall_{name}"] is None else row[f"recall_{name}"]
                for name in result.class_names
            ]
            for row in result.summary
        ]
    )
    figure, axis = plt.subplots(
        figsize=(max(5.0, 0.9 * len(result.class_names) + 2.5), 0.34 * len(labels) + 1.8)
    )
    image = axis.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    axis.set_xticks(np.arange(len(result.class_names)), result.class_names, rotation=40, ha="right")
    axis.set_yticks(np.arange(len(labels)), labels)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if np.isfinite(matrix[i, j]):
                axis.text(
                    j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] < 0.55 else "black",
                )  # fmt: skip
    figure.colorbar(image, ax=axis, label="test recall (mean over seeds)")
    axis.set_title(f"{result.config.name}: per-class recall")
    _save(figure, path)


def plot_paired(result: BenchmarkResult, path: Path) -> None:
    """Paired differences against the baseline with their bootstrap CIs (one panel per metric)."""
    plt = _pyplot()
    rows = [row for row in result.summary if row["loss"] != result.config.baseline]
    if not rows:
        return
    labels = [display_label(row) for row in rows]
    positions = np.arange(len(rows))
    figure, axes = plt.subplots(
        1, len(PAIRED_METRICS), figsize=(4.5 * len(PAIRED_METRICS), 0.32 * len(rows) + 1.6), sharey=True
    )
    for axis, metric in zip(np.atleast_1d(axes), PAIRED_METRICS, strict=True):
        values = np.array(
            [np.nan if r[f"{metric}_vs_baseline"] is None else r[f"{metric}_vs_baseline"] for r in rows]
        )
        lows = np.array([r[f"{metric}_vs_baseline_ci"][0] for r in rows])
        highs = np.array([r[f"{metric}_vs_baseline_ci"][1] for r in rows])
        errors = np.nan_to_num(np.vstack([values - lows, highs - values]).clip(min=0))
        colours = [
            "tab:green" if low > 0 else "tab:red" if high < 0 else "tab:gray"
            for low, high in zip(lows, highs, strict=True)
        ]
        for position, value, error, colour in zip(positions, values, errors.T, colours, strict=True):
            axis.errorbar(value, position, xerr=error.reshape(2, 1), fmt="none", ecolor=colour, capsize=3)
        axis.scatter(values, positions, color=colours, zorder=3)
        axis.axvline(0.0, color="black", linewidth=0.8)
        axis.set_yticks(positions, labels)
        axis.grid(axis="x", alpha=0.3)
        axis.set_title(f"Δ {METRIC_TITLES[metric]} vs {result.config.baseline}")
    np.atleast_1d(axes)[0].invert_yaxis()  # the panels share the y axis: invert it once
    figure.suptitle(
        f"{result.config.name}: paired differences, {result.config.bootstrap.confidence:.0%} bootstrap CI"
    )
    _save(figure, path)


def summary_for_json(result: BenchmarkResult) -> list[dict[str, Any]]:
    """The ``--json`` rows: the table's columns per loss."""
    keys = ["loss", "name"]
    for metric in TABLE_METRICS:
        keys += [metric, f"{metric}_std"]
    for metric in PAIRED_METRICS:
        keys += [f"{metric}_vs_baseline", f"{metric}_vs_baseline_ci"]
    for metric in PAIRED_METRICS:
        keys += [f"{metric}_vs_control", f"{metric}_vs_control_ci"]
    keys += ["control", "control_for", "collapsed", "n_seeds", "seconds"]
    return _json_safe([{key: row.get(key) for key in keys} for row in result.summary])
