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


class _Ranking:
    """One model's scores for the minority classes of one seed, sorted once, so the average precision
    of any bootstrap draw (given as item counts) is a few cumulative sums."""

    def __init__(self, y: np.ndarray, proba: np.ndarray, minority: np.ndarray) -> None:
        self.parts = []
        for c in minority:
            order = np.argsort(-proba[:, c], kind="stable")
            scores = proba[order, c]
            ends = np.append(scores[1:] != scores[:-1], True)  # last item of each tied group
            self.parts.append((order, (y[order] == c).astype(np.float64), ends))

    def average_precision(self, counts: np.ndarray) -> float:
        """Mean over the minority classes of the (step-wise, sklearn) average precision."""
        values = []
        for order, positive, ends in self.parts:
            weights = counts[order]
            true_positive = np.cumsum(weights * positive)[ends]
            if true_positive[-1] <= 0:
                continue
            seen = np.cumsum(weights)[ends]
            # groups before the first drawn item have no precision and gain no recall
            precision = np.divide(true_positive, seen, out=np.zeros_like(seen), where=seen > 0)
            gained = np.diff(true_positive, prepend=0.0)
            values.append(float((precision * gained).sum() / true_positive[-1]))
        return float(np.mean(values)) if values else math.nan


def minority_pr_auc(y: np.ndarray, proba: np.ndarray, minority: np.ndarray) -> float | None:
    """Average precision (PR-AUC) of the minority class(es), one-vs-rest, averaged over them."""
    value = _Ranking(y, proba, minority).average_precision(np.ones(len(y)))
    return value if math.isfinite(value) else None


def _draw_scores(
    y: np.ndarray, predicted: np.ndarray, ranking: _Ranking | None, index: np.ndarray, n_classes: int,
    minority: np.ndarray,
) -> tuple[float, ...]:  # fmt: skip
    scores = _scores(_confusion(y[index], predicted[index], n_classes), minority)
    if ranking is None:
        return scores
    return (*scores, ranking.average_precision(np.bincount(index, minlength=len(y)).astype(np.float64)))


def paired_bootstrap(
    pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    n_classes: int,
    minority: np.ndarray,
    *,
    samples: int,
    confidence: float,
    seed: int,
) -> dict[str, tuple[float, float]]:
    """Percentile CIs of the paired difference (method - reference) of macro-F1, minority recall and,
    when probabilities are given, the minority PR-AUC.

    ``pairs`` holds one (labels, method, reference) triple per seed, on the same test items; method
    and reference are predicted classes [N] or probabilities [N, C]. Each replicate draws the seeds
    with replacement (when there are several) and, within each drawn seed, the test items with
    replacement: the same items for both models.
    """
    rng = np.random.default_rng(seed)
    n_seeds = len(pairs)
    with_ranking = all(np.ndim(method) == 2 and np.ndim(reference) == 2 for _, method, reference in pairs)
    n_metrics = 3 if with_ranking else 2
    prepared = []
    for y, method, reference in pairs:
        rankings = (_Ranking(y, method, minority), _Ranking(y, reference, minority)) if with_ranking else None
        labels = [m.argmax(axis=1) if np.ndim(m) == 2 else m for m in (method, reference)]
        prepared.append((y, labels, rankings))
    differences = np.empty((samples, n_metrics))
    for b in range(samples):
        chosen = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else np.zeros(1, dtype=int)
        total = np.zeros(n_metrics)
        counted = np.zeros(n_metrics)
        for s in chosen:
            y, (method, reference), rankings = prepared[s]
            index = rng.integers(0, len(y), len(y))
            a = _draw_scores(y, method, rankings and rankings[0], index, n_classes, minority)
            z = _draw_scores(y, reference, rankings and rankings[1], index, n_classes, minority)
            for m in range(n_metrics):
                if math.isfinite(a[m]) and math.isfinite(z[m]):
                    total[m] += a[m] - z[m]
                    counted[m] += 1
        differences[b] = np.divide(total, counted, out=np.full(n_metrics, np.nan), where=counted > 0)
    alpha = (1.0 - confidence) / 2.0
    intervals = {}
    for m, name in enumerate(PAIRED_METRICS[:n_metrics]):
        column = differences[:, m][np.isfinite(differences[:, m])]
        if column.size == 0:
            intervals[name] = (math.nan, math.nan)
        else:
            low, high = np.quantile(column, [alpha, 1.0 - alpha])
            intervals[name] = (float(low), float(high))
    return intervals
