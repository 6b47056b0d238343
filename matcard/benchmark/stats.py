"""Statistics: scores from confusion matrices, minority classes and the paired bootstrap."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from matcard.benchmark.schema import PAIRED_METRICS, BenchmarkConfig
from matcard.errors import ConfigError


def _confusion(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(y * n_classes + predicted, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def _scores(matrix: np.ndarray, minority: np.ndarray) -> tuple[float, float]:
    """(macro-F1, minority recall) from a confusion matrix, with matcard.metrics' definitions:
    macro-F1 over classes present or predicted; recall averaged over the minority classes present."""
    true_positive = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    scored = (support > 0) | (predicted > 0)
    denominator = support + predicted
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    macro_f1 = float(f1[scored].mean()) if scored.any() else math.nan
    present = minority[support[minority] > 0]
    recall = float((true_positive[present] / support[present]).mean()) if present.size else math.nan
    return macro_f1, recall


def minority_recall(metrics: dict[str, Any], minority_classes: Sequence[str]) -> float | None:
    recalls = [metrics["per_class"][name]["recall"] for name in minority_classes]
    recalls = [value for value in recalls if value is not None]
    return float(np.mean(recalls)) if recalls else None


def choose_minority(config: BenchmarkConfig, class_names: list[str], train_counts: np.ndarray) -> list[str]:
    if isinstance(config.minority, list):
        unknown = sorted(set(config.minority) - set(class_names))
        if unknown:
            raise ConfigError(f"minority: unknown classes {unknown}; the task has {class_names}")
        return list(config.minority)
    if config.minority == "non_majority":
        largest = int(np.argmax(train_counts))
        return [name for k, name in enumerate(class_names) if k != largest]
    return [class_names[int(np.argmin(train_counts))]]


def paired_bootstrap(
    pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    n_classes: int,
    minority: np.ndarray,
    *,
    samples: int,
    confidence: float,
    seed: int,
) -> dict[str, tuple[float, float]]:
    """Percentile CIs of the paired difference (method - baseline) of macro-F1 and minority recall.

    ``pairs`` holds one (labels, method predictions, baseline predictions) triple per seed, on the
    same test items. Each replicate draws the seeds with replacement (when there are several) and,
    within each drawn seed, the test items with replacement: the same items for both predictions.
    """
    rng = np.random.default_rng(seed)
    n_seeds = len(pairs)
    differences = np.empty((samples, 2))
    for b in range(samples):
        chosen = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else np.zeros(1, dtype=int)
        total = np.zeros(2)
        counted = np.zeros(2)
        for s in chosen:
            y, method, baseline = pairs[s]
            index = rng.integers(0, len(y), len(y))
            a = _scores(_confusion(y[index], method[index], n_classes), minority)
            z = _scores(_confusion(y[index], baseline[index], n_classes), minority)
            for m in range(2):
                if math.isfinite(a[m]) and math.isfinite(z[m]):
                    total[m] += a[m] - z[m]
                    counted[m] += 1
        differences[b] = np.divide(total, counted, out=np.full(2, np.nan), where=counted > 0)
    alpha = (1.0 - confidence) / 2.0
    intervals = {}
    for m, name in enumerate(PAIRED_METRICS):
        column = differences[:, m][np.isfinite(differences[:, m])]
        if column.size == 0:
            intervals[name] = (math.nan, math.nan)
        else:
            low, high = np.quantile(column, [alpha, 1.0 - alpha])
            intervals[name] = (float(low), float(high))
    return intervals
