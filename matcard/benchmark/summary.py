"""Summary rows: per seed, and per entry (mean ± std, paired differences against the baseline and,
for an entry with a count-matched control, against that control)."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from matcard._version import __version__
from matcard.benchmark import decisions
from matcard.benchmark.cells import _cell_predictions, collapsed_from_predictions
from matcard.benchmark.planning import Cell
from matcard.benchmark.schema import (
    PAIRED_METRICS,
    TABLE_METRICS,
    BenchmarkConfig,
    BenchmarkResult,
    LossEntry,
)
from matcard.benchmark.stats import choose_minority, minority_pr_auc, minority_recall, paired_bootstrap
from matcard.errors import MatcardError

Predictions = dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]


def summarise(
    config: BenchmarkConfig,
    cells: Sequence[Cell],
    records: dict[tuple[str, int], dict[str, Any]],
    out: Path,
) -> BenchmarkResult:
    """Per-seed rows, per-loss summary rows (mean ± std, paired differences with bootstrap CIs)."""
    baseline_records = [records[(config.baseline, s)] for s in config.seeds]
    class_names = list(baseline_records[0]["class_names"])
    counts = np.sum([r["train_class_counts"] for r in baseline_records], axis=0)
    minority = choose_minority(config, class_names, counts)
    minority_index = np.array([class_names.index(name) for name in minority])
    predictions: Predictions = {(c.label, c.seed): _cell_predictions(c) for c in cells}
    cell_of = {(c.label, c.seed): c for c in cells}
    for key, record in records.items():
        if record.get("collapsed") is None and key in cell_of:  # a cell.json older than the verdict
            record["collapsed"] = collapsed_from_predictions(cell_of[key])
    per_seed = [
        _seed_row(config, entry, seed, records, class_names, minority, predictions[(entry.label, seed)])
        for entry in config.losses
        for seed in config.seeds
    ]
    # argmax and tuned decisions of every loss (matcard.decision), from the cells' run directories
    tuned = {key: decisions.tuned_predictions(cell) for key, cell in cell_of.items()}
    for row in per_seed:
        key = (row["loss"], row["seed"])
        row.update(decisions.seed_columns(cell_of[key], tuned[key], minority_index, class_names))
    summary = [
        _entry_row(config, entry, per_seed, class_names, minority_index, predictions)
        for entry in config.losses
    ]
    for row in summary:
        row.update(decisions.entry_columns(config, row["loss"], per_seed, predictions, tuned,
                                           len(class_names), minority_index))  # fmt: skip
    return BenchmarkResult(
        config=config,
        out_dir=out,
        summary=summary,
        per_seed=per_seed,
        minority_classes=minority,
        class_names=class_names,
        environment=environment(),
        data=dict(baseline_records[0].get("data") or {}),
    )


def _seed_row(
    config: BenchmarkConfig,
    entry: LossEntry,
    seed: int,
    records: dict[tuple[str, int], dict[str, Any]],
    class_names: list[str],
    minority: list[str],
    prediction: tuple[np.ndarray, np.ndarray],
) -> dict[str, Any]:
    record = records[(entry.label, seed)]
    if record["class_names"] != class_names:
        raise MatcardError(f"{entry.label} seed {seed}: classes differ from the baseline's")
    baseline = records[(config.baseline, seed)]
    if record["test_ids_sha256"] != baseline["test_ids_sha256"]:
        raise MatcardError(
            f"{entry.label} seed {seed} was tested on other items than {config.baseline} "
            f"seed {seed}: the split must be the same for every loss of a seed"
        )
    test = record["test"]
    y, proba = prediction
    computed = {
        "minority_recall": minority_recall(test, minority),
        "pr_auc_minority": minority_pr_auc(y, proba, np.array([class_names.index(m) for m in minority])),
    }
    row: dict[str, Any] = {"loss": entry.label, "seed": seed}
    for metric in TABLE_METRICS:
        row[metric] = computed[metric] if metric in computed else test[metric]
    row.update(
        accuracy=test["accuracy"],
        mcc=test["mcc"],
        roc_auc_macro=test["roc_auc_macro"],
        val_macro_f1=record["val_macro_f1"],
        selected_epoch=record["selected_epoch"],
        epochs_run=record["epochs_run"],
        n_test=record["n_test"],
        seconds=record["seconds"],
        collapsed=bool(record.get("collapsed")),
        realised_class_weights=(record.get("loss") or {}).get("realised_class_weights"),
    )
    row.update({f"recall_{name}": test["per_class"][name]["recall"] for name in class_names})
    return row


def _entry_row(
    config: BenchmarkConfig,
    entry: LossEntry,
    per_seed: list[dict[str, Any]],
    class_names: list[str],
    minority_index: np.ndarray,
    predictions: Predictions,
) -> dict[str, Any]:
    rows = [r for r in per_seed if r["loss"] == entry.label]
    control = config.control_of(entry.label)
    row: dict[str, Any] = {
        "loss": entry.label,
        "name": entry.loss,
        "note": entry.note,
        "control_for": entry.control_for,
        "control": control,
    }
    for metric in (*TABLE_METRICS, "accuracy", "mcc", "roc_auc_macro", "seconds"):
        values = np.array([r[metric] for r in rows if r[metric] is not None], dtype=np.float64)
        row[metric] = float(values.mean()) if values.size else None
        row[f"{metric}_std"] = float(values.std(ddof=1)) if values.size > 1 else None
    for name in class_names:
        values = [r[f"recall_{name}"] for r in rows if r[f"recall_{name}"] is not None]
        row[f"recall_{name}"] = float(np.mean(values)) if values else None
    row["n_seeds"] = len(rows)
    row["collapsed"] = sum(1 for r in rows if r["collapsed"])  # seeds whose run collapsed
    references = {"baseline": config.baseline if entry.label != config.baseline else None, "control": control}
    for name, reference in references.items():
        if name == "control" and reference is None:  # no control: empty columns
            row.update({f"{m}_vs_control": None for m in PAIRED_METRICS})
            row.update({f"{m}_vs_control_ci": [math.nan, math.nan] for m in PAIRED_METRICS})
            continue
        row.update(_paired(config, entry.label, reference, name, per_seed, len(class_names), minority_index,
                           predictions))  # fmt: skip
    return row


def _paired(
    config: BenchmarkConfig,
    label: str,
    reference: str | None,
    name: str,
    per_seed: list[dict[str, Any]],
    n_classes: int,
    minority_index: np.ndarray,
    predictions: Predictions,
) -> dict[str, Any]:
    """``<metric>_vs_<name>`` (mean paired difference) and ``<metric>_vs_<name>_ci`` columns;
    the baseline against itself is exactly 0."""
    intervals = {metric: (0.0, 0.0) for metric in PAIRED_METRICS}
    if reference is not None:
        pairs = []
        for seed in config.seeds:
            y, proba = predictions[(label, seed)]
            pairs.append((y, proba, predictions[(reference, seed)][1]))
        intervals = paired_bootstrap(
            pairs,
            n_classes,
            minority_index,
            samples=config.bootstrap.samples,
            confidence=config.bootstrap.confidence,
            seed=config.bootstrap.seed,
        )
    own = {r["seed"]: r for r in per_seed if r["loss"] == label}
    other = {r["seed"]: r for r in per_seed if r["loss"] == (reference or label)}
    columns: dict[str, Any] = {}
    for metric in PAIRED_METRICS:
        differences = [
            own[s][metric] - other[s][metric]
            for s in config.seeds
            if own[s][metric] is not None and other[s][metric] is not None
        ]
        columns[f"{metric}_vs_{name}"] = float(np.mean(differences)) if differences else None
        low, high = intervals.get(metric, (math.nan, math.nan))
        columns[f"{metric}_vs_{name}_ci"] = [low, high]
    return columns


def environment() -> dict[str, Any]:
    """Hardware and versions, stated beside every table."""
    import importlib.metadata as metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("torch", "torch-geometric", "lightning", "pymatgen", "matminer", "scikit-learn", "pot"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": _gpu_name(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "matcard": __version__,
        "versions": versions,
    }


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # no usable CUDA: report none
        return None
