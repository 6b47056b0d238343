"""The minority PR-AUC and its paired bootstrap (matcard/benchmark/stats.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from matcard.benchmark import minority_pr_auc, paired_bootstrap


def _probabilities(rng, y, n_classes, signal):
    logits = rng.normal(size=(len(y), n_classes))
    logits[np.arange(len(y)), y] += signal
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


@pytest.mark.parametrize("rounded", [False, True])
def test_minority_pr_auc_is_sklearns_average_precision(rounded):
    rng = np.random.default_rng(0)
    y = rng.choice(3, size=400, p=[0.7, 0.2, 0.1])
    proba = _probabilities(rng, y, 3, 1.0)
    if rounded:  # many tied scores, as a near-constant predictor gives
        proba = np.round(proba, 1)
    for minority in ([2], [1, 2]):
        expected = np.mean([average_precision_score(y == c, proba[:, c]) for c in minority])
        assert minority_pr_auc(y, proba, np.array(minority)) == pytest.approx(expected, abs=1e-12)


def test_bootstrap_with_probabilities_adds_the_minority_pr_auc_and_keeps_the_other_intervals():
    rng = np.random.default_rng(1)
    pairs = []
    for _ in range(3):
        y = rng.choice(2, size=300, p=[0.85, 0.15])
        pairs.append((y, _probabilities(rng, y, 2, 2.0), _probabilities(rng, y, 2, 0.5)))
    options = {"samples": 300, "confidence": 0.95, "seed": 0}
    with_proba = paired_bootstrap(pairs, 2, np.array([1]), **options)
    labels_only = paired_bootstrap(
        [(y, a.argmax(axis=1), b.argmax(axis=1)) for y, a, b in pairs], 2, np.array([1]), **options
    )
    assert set(with_proba) == {"macro_f1", "minority_recall", "pr_auc_minority"}
    assert set(labels_only) == {"macro_f1", "minority_recall"}
    # the same draws: the label metrics' intervals do not change when the ranking metric is added
    assert with_proba["macro_f1"] == labels_only["macro_f1"]
    low, high = with_proba["pr_auc_minority"]
    assert 0 < low < high  # the stronger model ranks the minority class clearly better
    same = paired_bootstrap([(y, a, a) for y, a, _ in pairs], 2, np.array([1]), **options)
    assert same["pr_auc_minority"] == (0.0, 0.0)


def test_a_draw_that_misses_the_top_ranked_items_has_a_finite_pr_auc():
    from matcard.benchmark.stats import _Ranking

    y = np.array([0, 1, 0, 1, 0, 0])
    proba = np.column_stack([1 - np.linspace(0.9, 0.1, 6), np.linspace(0.9, 0.1, 6)])
    counts = np.array([0, 0, 1, 2, 1, 1], dtype=float)  # the two best-scored items are not drawn
    drawn = np.repeat(np.arange(6), counts.astype(int))
    expected = average_precision_score(y[drawn] == 1, proba[drawn, 1])
    assert _Ranking(y, proba, np.array([1])).average_precision(counts) == pytest.approx(expected)
