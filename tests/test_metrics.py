from __future__ import annotations

import json

import numpy as np
import pytest
from imblearn.metrics import geometric_mean_score
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    matthews_corrcoef,
    roc_auc_score,
)

from matcard.metrics import (
    HEADLINE_METRICS,
    classification_metrics,
    expected_calibration_error,
    plot_confusion_matrix,
    plot_per_class_recall,
)

NAMES = ["cubic", "hexagonal", "triclinic"]


def _random_case(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.7, 0.25, 0.05])
    logits = rng.normal(size=(n, 3)) + 2.0 * np.eye(3)[y] * rng.random((n, 1))
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, proba


def test_agrees_with_scikit_learn_and_imbalanced_learn():
    y, proba = _random_case()
    pred = proba.argmax(1)
    m = classification_metrics(y, proba, NAMES)
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, pred))
    assert m["gmean"] == pytest.approx(geometric_mean_score(y, pred, average="multiclass"))
    assert m["roc_auc_macro"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    pr = np.mean([average_precision_score(y == c, proba[:, c]) for c in range(3)])
    assert m["pr_auc_macro"] == pytest.approx(pr)
    assert set(HEADLINE_METRICS) <= set(m)
    assert list(m["per_class"]) == NAMES
    matrix = np.array(m["confusion_matrix"]["matrix"])
    assert matrix.sum() == len(y)
    assert [row["support"] for row in m["per_class"].values()] == matrix.sum(1).tolist()


def test_expected_calibration_error_by_hand():
    # two confident right answers at 0.9, two wrong at 0.6 -> |1-0.9|*0.5 + |0-0.6|*0.5 = 0.35
    proba = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 1, 0])
    assert expected_calibration_error(y, proba, n_bins=10) == pytest.approx(0.35)
    perfect = np.eye(2)[[0, 1, 1]]
    assert expected_calibration_error(np.array([0, 1, 1]), perfect) == pytest.approx(0.0)


def test_a_class_absent_from_the_split_is_reported_not_fatal():
    y, proba = _random_case()
    keep = y != 2  # no triclinic in this split
    m = classification_metrics(y[keep], proba[keep], NAMES)
    assert m["per_class"]["triclinic"]["support"] == 0
    assert m["per_class"]["triclinic"]["recall"] is None
    assert m["auc_classes"] == 2  # ranking metrics only where both positives and negatives exist
    pred = proba[keep].argmax(1)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y[keep], pred))
    json.dumps(m, allow_nan=False)  # valid JSON: no NaN anywhere


def test_single_class_split_and_empty_split():
    m = classification_metrics([1, 1, 1], np.array([[0.2, 0.8, 0.0]] * 3), NAMES)
    assert m["accuracy"] == 1.0 and m["roc_auc_macro"] is None and m["pr_auc_macro"] is None
    empty = classification_metrics([], np.zeros((0, 3)), NAMES)
    assert empty["n_samples"] == 0 and empty["accuracy"] is None
    json.dumps(empty, allow_nan=False)


def test_bad_shapes_and_labels_fail_clearly():
    with pytest.raises(ValueError, match="shape"):
        classification_metrics([0, 1], np.zeros((3, 3)), NAMES)
    with pytest.raises(ValueError, match="labels"):
        classification_metrics([0, 5], np.full((2, 3), 1 / 3), NAMES)


def test_plots_are_written(tmp_path):
    y, proba = _random_case()
    m = classification_metrics(y, proba, NAMES)
    plot_confusion_matrix(m, tmp_path / "cm.png")
    plot_per_class_recall({"val": m, "test": m}, tmp_path / "recall.png")
    for name in ("cm.png", "recall.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
