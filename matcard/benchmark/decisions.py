"""Benchmark columns for the post-hoc decision layer (matcard.decision): which *recipe* wins.

Every training cell is a run directory whose ``predictions.parquet`` carries ``predicted_tuned``
beside the argmax ``predicted`` and whose ``metrics.json["decision"]`` holds ECE before / after
temperature scaling and the conformal coverage. Per seed: tuned macro-F1 and minority recall, ECE
before / after, mean per-class conformal coverage and set size. Per entry: their means, and paired
bootstrap CIs of tuned against argmax (the same loss) and of this loss-with-tuning against the
baseline-with-tuning. Cells without a decision layer (synthetic cells, older runs) get None.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from matcard.benchmark.planning import Cell
from matcard.benchmark.schema import BenchmarkConfig
from matcard.benchmark.stats import _confusion, _scores, paired_bootstrap

TUNED_METRICS = ("tuned_macro_f1", "tuned_minority_recall", "ece_before", "ece_after",
                 "conformal_class_coverage", "conformal_minority_coverage",
                 "conformal_set_size")  # fmt: skip
# per-seed test coverage of one class's conformal sets: f"{COVERAGE_PREFIX}{class name}"
COVERAGE_PREFIX = "conformal_coverage_"
Tuned = dict[tuple[str, int], tuple[np.ndarray, np.ndarray] | None]


def tuned_predictions(cell: Cell) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, tuned predicted classes) of the test items, or None when the cell has no tuned rule."""
    import pandas as pd

    frame = pd.read_parquet(cell.directory / "predictions.parquet")
    frame = frame[frame["split"] == "test"]
    if "predicted_tuned" not in frame.columns:
        return None
    names = [column[len("prob_") :] for column in frame.columns if column.startswith("prob_")]
    index = {name: k for k, name in enumerate(names)}
    return (
        frame["label"].map(index).to_numpy(dtype=np.int64),
        frame["predicted_tuned"].map(index).to_numpy(dtype=np.int64),
    )


def seed_columns(cell: Cell, tuned: tuple[np.ndarray, np.ndarray] | None, minority: np.ndarray,
                 class_names: list[str]) -> dict[str, Any]:  # fmt: skip
    """The per-seed decision columns of one cell (None where it has no decision layer)."""
    columns: dict[str, Any] = dict.fromkeys(TUNED_METRICS)
    columns.update(dict.fromkeys(f"{COVERAGE_PREFIX}{name}" for name in class_names))
    if tuned is not None:
        macro_f1, recall = _scores(_confusion(tuned[0], tuned[1], len(class_names)), minority)
        columns["tuned_macro_f1"] = macro_f1 if math.isfinite(macro_f1) else None
        columns["tuned_minority_recall"] = recall if math.isfinite(recall) else None
    path = cell.directory / "metrics.json"
    report = (
        json.loads(path.read_text(encoding="utf-8")).get("decision", {}).get("test")
        if path.is_file()
        else None
    )
    if report and report.get("decision_layer"):
        columns["ece_before"] = report["calibration"]["ece_before"]
        columns["ece_after"] = report["calibration"]["ece_after"]
        conformal = report.get("conformal") or {}
        columns["conformal_class_coverage"] = conformal.get("mean_class_coverage")
        columns["conformal_set_size"] = conformal.get("mean_set_size")
        per_class = conformal.get("per_class") or {}
        for name in class_names:
            columns[f"{COVERAGE_PREFIX}{name}"] = (per_class.get(name) or {}).get("coverage")
        minority_coverage = [columns[f"{COVERAGE_PREFIX}{class_names[k]}"] for k in minority]
        if minority_coverage and all(value is not None for value in minority_coverage):
            columns["conformal_minority_coverage"] = float(np.mean(minority_coverage))
    return columns


def entry_columns(
    config: BenchmarkConfig,
    label: str,
    per_seed: list[dict[str, Any]],
    argmax: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]],
    tuned: Tuned,
    n_classes: int,
    minority: np.ndarray,
) -> dict[str, Any]:
    """Means of the per-seed decision columns; paired CIs tuned vs argmax and vs the tuned baseline."""
    rows = [r for r in per_seed if r["loss"] == label]
    columns: dict[str, Any] = {}
    coverage_columns = list(dict.fromkeys(k for r in rows for k in r if k.startswith(COVERAGE_PREFIX)))
    for metric in (*TUNED_METRICS, *coverage_columns):
        values = [r[metric] for r in rows if r.get(metric) is not None]
        columns[metric] = float(np.mean(values)) if values else None
    comparisons = {
        "tuned_vs_argmax": lambda seed: argmax[(label, seed)][1],
        "tuned_vs_baseline_tuned": lambda seed: _classes(tuned.get((config.baseline, seed))),
    }
    for name, reference_of in comparisons.items():
        pairs = []
        for seed in config.seeds:
            own, reference = tuned.get((label, seed)), reference_of(seed)
            if own is None or reference is None:
                pairs = []
                break
            pairs.append((own[0], own[1], reference))
        same = name == "tuned_vs_baseline_tuned" and label == config.baseline
        for metric in ("macro_f1", "minority_recall"):
            columns[f"{metric}_{name}_ci"] = [math.nan, math.nan]
        if pairs and not same:
            intervals = paired_bootstrap(
                pairs, n_classes, minority, samples=config.bootstrap.samples,
                confidence=config.bootstrap.confidence, seed=config.bootstrap.seed,
            )  # fmt: skip
            for metric in ("macro_f1", "minority_recall"):
                columns[f"{metric}_{name}_ci"] = list(intervals[metric])
    return columns


def _classes(pair: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray | None:
    return None if pair is None else pair[1]
