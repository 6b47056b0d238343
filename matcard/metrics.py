"""Metrics an imbalanced classification task deserves (methods brief §6), keyed by class name.

``classification_metrics(y_true, proba, class_names)`` returns a JSON-serialisable dict. It is robust
to classes absent from a split: per-class scores are reported for every class (support 0 where
absent), and the macro ROC/PR-AUC average only over classes that have both positives and negatives
in ``y_true`` (their count is reported as ``auc_classes``). Undefined values are ``None``, never NaN,
so ``metrics.json`` stays valid JSON.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

HEADLINE_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "mcc",
    "gmean",
    "roc_auc_macro",
    "pr_auc_macro",
    "ece",
)


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: |accuracy - confidence| averaged over equal-width confidence bins, weighted by size."""
    if len(y_true) == 0:
        return float("nan")
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(np.float64)
    # bins (lo, hi]; confidence is > 0 for any probability vector, so every sample lands in a bin
    bin_index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bin_index == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    proba: np.ndarray,
    class_names: Sequence[str],
    *,
    ece_bins: int = 15,
    pred: Sequence[int] | np.ndarray | None = None,
) -> dict[str, Any]:
    """All §6 metrics for integer labels ``y_true`` [N] and class probabilities ``proba`` [N, C].

    ``pred``: the decided classes when a rule other than argmax made them (matcard.decision); the
    ranking metrics and ECE always read ``proba``.
    """
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    proba = np.asarray(proba, dtype=np.float64)
    n_classes = len(class_names)
    if proba.ndim != 2 or proba.shape != (len(y), n_classes):
        raise ValueError(f"proba must have shape ({len(y)}, {n_classes}), got {proba.shape}")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got range [{y.min()}, {y.max()}]")
    if len(y) == 0:
        return _empty_metrics(class_names)
    with warnings.catch_warnings():  # absent classes are handled explicitly below
        warnings.simplefilter("ignore")
        decided = None if pred is None else np.asarray(pred, dtype=np.int64).reshape(-1)
        return _metrics(y, proba, list(class_names), ece_bins, decided)


def _empty_metrics(class_names: Sequence[str]) -> dict[str, Any]:
    n_classes = len(class_names)
    return {
        "n_samples": 0,
        **{key: None for key in HEADLINE_METRICS},
        "auc_classes": 0,
        "per_class": {
            name: {"precision": 0.0, "recall": None, "f1": 0.0, "support": 0} for name in class_names
        },
        "confusion_matrix": {
            "labels": list(class_names),
            "matrix": [[0] * n_classes for _ in range(n_classes)],
        },
    }


def _metrics(
    y: np.ndarray, proba: np.ndarray, class_names: list[str], ece_bins: int, pred: np.ndarray | None
) -> dict[str, Any]:
    labels = np.arange(len(class_names))
    pred = proba.argmax(axis=1) if pred is None else pred

    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    present = support > 0  # classes with samples in this split
    scored = present | np.isin(labels, pred)  # present or predicted (sklearn's macro set)
    recalls_present = recall[present]

    auc_scores: list[float] = []
    pr_scores: list[float] = []
    for c in labels:
        positives = y == c
        if 0 < positives.sum() < len(y):  # both classes needed for a ranking metric
            auc_scores.append(roc_auc_score(positives, proba[:, c]))
            pr_scores.append(average_precision_score(positives, proba[:, c]))

    matrix = confusion_matrix(y, pred, labels=labels)
    result: dict[str, Any] = {
        "n_samples": len(y),
        "accuracy": _finite_or_none((pred == y).mean()),
        "balanced_accuracy": _finite_or_none(recalls_present.mean()) if present.any() else None,
        "macro_f1": _finite_or_none(f1[scored].mean()) if scored.any() else None,
        "mcc": _finite_or_none(matthews_corrcoef(y, pred)),
        # geometric mean of the recalls of the classes present in y_true (a class absent from the
        # split has no recall; imbalanced-learn would count a merely predicted class as recall 0)
        "gmean": _finite_or_none(np.prod(recalls_present) ** (1.0 / present.sum()))
        if present.any()
        else None,
        "roc_auc_macro": _finite_or_none(np.mean(auc_scores)) if auc_scores else None,
        "pr_auc_macro": _finite_or_none(np.mean(pr_scores)) if pr_scores else None,
        "auc_classes": len(auc_scores),
        "ece": _finite_or_none(expected_calibration_error(y, proba, ece_bins)),
        "per_class": {
            name: {
                "precision": float(precision[c]),
                "recall": float(recall[c]) if present[c] else None,
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c, name in enumerate(class_names)
        },
        "confusion_matrix": {"labels": list(class_names), "matrix": matrix.astype(int).tolist()},
    }
    return result


RANKING_FRACTIONS = (0.01, 0.05, 0.10)


def minority_classes(class_counts: Sequence[int] | np.ndarray) -> list[int]:
    """Classes a screen looks for: binary, the positive class; else every class but the most frequent."""
    counts = np.asarray(class_counts)
    if len(counts) == 2:
        return [1]
    majority = int(np.argmax(counts))
    return [c for c in range(len(counts)) if c != majority]


def ranking_metrics(
    y_true: Sequence[int] | np.ndarray,
    proba: np.ndarray,
    class_names: Sequence[str],
    classes: Sequence[int],
    fractions: Sequence[float] = RANKING_FRACTIONS,
) -> dict[str, Any]:
    """Screening metrics per class c (methods brief §8), ranking the items by p_c.

    For k = max(1, round(f * N)): precision@k, recall@k and enrichment EF@k = precision@k / base rate
    of c; plus PR-AUC (average precision). Ties in p_c keep the input order (a stable sort).
    """
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    proba = np.asarray(proba, dtype=np.float64)
    result: dict[str, Any] = {}
    for c in classes:
        positives = y == c
        n_pos, n = int(positives.sum()), len(y)
        entry: dict[str, Any] = {"support": n_pos, "base_rate": n_pos / n if n else None}
        entry["pr_auc"] = (
            _finite_or_none(average_precision_score(positives, proba[:, c])) if 0 < n_pos < n else None
        )
        order = np.argsort(-proba[:, c], kind="stable") if n else np.zeros(0, dtype=np.int64)
        for fraction in fractions:
            k = max(1, round(fraction * n)) if n else 0
            hits = int(positives[order[:k]].sum()) if k else 0
            precision = hits / k if k else None
            entry[f"at_{round(fraction * 100):g}pct"] = {
                "k": k,
                "precision": precision,
                "recall": hits / n_pos if n_pos else None,
                "enrichment": precision / entry["base_rate"] if precision is not None and n_pos else None,
            }
        result[class_names[c]] = entry
    return result


def plot_confusion_matrix(metrics: dict[str, Any], path: str | Path, title: str = "Confusion matrix") -> None:
    """Row-normalised confusion matrix with raw counts annotated (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matcard.fileio import atomic_path

    names = metrics["confusion_matrix"]["labels"]
    counts = np.asarray(metrics["confusion_matrix"]["matrix"], dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = max(4.0, 0.6 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(
                j,
                i,
                f"{int(counts[i, j])}",
                ha="center",
                va="center",
                color="white" if normalised[i, j] > 0.5 else "black",
                fontsize=8,
            )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_per_class_recall(
    sections: dict[str, dict[str, Any]], path: str | Path, title: str = "Per-class recall"
) -> None:
    """Grouped bars of per-class recall for each metrics section (e.g. val and test), support labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matcard.fileio import atomic_path

    names = list(next(iter(sections.values()))["per_class"])
    x = np.arange(len(names))
    width = 0.8 / max(1, len(sections))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 2), 4))
    for k, (section, metrics) in enumerate(sections.items()):
        recalls = [metrics["per_class"][n]["recall"] for n in names]
        heights = [r if r is not None else 0.0 for r in recalls]
        bars = ax.bar(x + (k - (len(sections) - 1) / 2) * width, heights, width, label=section)
        for bar, name in zip(bars, names, strict=True):
            ax.annotate(
                f"n={metrics['per_class'][name]['support']}",
                (bar.get_x() + bar.get_width() / 2, 0.01),
                ha="center",
                va="bottom",
                fontsize=6,
                rotation=90,
            )
        if metrics.get("balanced_accuracy") is not None:
            ax.axhline(
                metrics["balanced_accuracy"],
                ls="--",
                lw=0.8,
                color=bars.patches[0].get_facecolor(),
                label=f"{section} balanced accuracy",
            )
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recall")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
