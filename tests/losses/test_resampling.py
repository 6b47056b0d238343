"""imbalanced-learn resamplers behind matcard.losses.resample."""

from __future__ import annotations

import numpy as np
import pytest

from matcard.errors import UsageError
from matcard.losses import RESAMPLERS, resample


@pytest.fixture(scope="module")
def imbalanced() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.array([0] * 120 + [1] * 30 + [2] * 12)
    X = rng.normal(size=(y.size, 4)) + y[:, None] * 1.5
    return X, y


@pytest.mark.parametrize("method", ["random_over", "smote", "adasyn", "smote_tomek", "smote_enn"])
def test_oversamplers_grow_the_minority(method: str, imbalanced) -> None:
    X, y = imbalanced
    X_res, y_res = resample(X, y, method, random_state=0)
    counts = np.bincount(y_res, minlength=3)
    assert counts[2] > 12 and counts[1] > 30
    assert X_res.shape == (y_res.size, 4)
    again = resample(X, y, method, random_state=0)
    np.testing.assert_array_equal(again[1], y_res)  # reproducible


@pytest.mark.parametrize("method", ["random_under", "tomek", "enn", "nearmiss"])
def test_undersamplers_shrink_the_majority(method: str, imbalanced) -> None:
    X, y = imbalanced
    X_res, y_res = resample(X, y, method)
    counts = np.bincount(y_res, minlength=3)
    assert counts[0] < 120 and counts[2] == 12
    assert set(map(tuple, X_res.round(12))) <= set(map(tuple, X.round(12)))  # rows kept, none invented


def test_every_method_is_registered_and_none_is_identity(imbalanced) -> None:
    assert {"smote", "adasyn", "tomek", "enn", "nearmiss"} <= set(RESAMPLERS)
    X, y = imbalanced
    X_res, _ = resample(X, y, "none")
    np.testing.assert_array_equal(X_res, X)


def test_small_classes_lower_k_neighbors_and_singletons_fail_clearly() -> None:
    rng = np.random.default_rng(1)
    y = np.array([0] * 40 + [1] * 3)
    X = rng.normal(size=(43, 2)) + y[:, None] * 3
    _, y_res = resample(X, y, "smote")  # default k 5 > 2 neighbours available: lowered to 2
    assert np.bincount(y_res).tolist() == [40, 40]
    with pytest.raises(UsageError, match="single example"):
        resample(X[:41], y[:41], "smote")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope",), "unknown resampler"),
        (("smote",), "NaN"),
    ],
)
def test_bad_requests(args, message, imbalanced) -> None:
    X, y = imbalanced
    X = X.copy()
    if message == "NaN":
        X[0, 0] = np.nan
    with pytest.raises(UsageError, match=message):
        resample(X, y, *args)
    with pytest.raises(UsageError, match="one label per row"):
        resample(X[:5], y, "tomek")
