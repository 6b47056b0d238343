"""Class-conditional (Mondrian) split-conformal prediction sets (methods brief §8).

Nonconformity s(x, y) = 1 - p_y(x) with calibrated probabilities. For class c with calibration
scores s_1..s_{n_c}, q_c is the ceil((n_c + 1)(1 - alpha))-th smallest (infinite when that index
exceeds n_c); the set is C(x) = {y : s(x, y) <= q_y}. Then P(Y in C(X) | Y = c) >= 1 - alpha for
every class, if calibration and test items are exchangeable and the calibration items did not select
the model. The sorted per-class scores are kept (not only q), so any alpha can be asked for later.

A class with no calibration item cannot be calibrated: it falls back to argmax (in the set only
where it is the most probable class) and is reported in ``fallback_classes`` without a guarantee.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def class_scores(proba: np.ndarray, y: np.ndarray, n_classes: int) -> list[list[float]]:
    """Sorted nonconformity scores 1 - p_y(x) of the calibration items, per class."""
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    scores = 1.0 - proba[np.arange(len(y)), y] if len(y) else np.zeros(0)
    return [sorted(float(s) for s in scores[y == c]) for c in range(n_classes)]


def quantile(sorted_scores: Sequence[float], alpha: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest score; +inf when that exceeds n (or n = 0)."""
    n = len(sorted_scores)
    rank = math.ceil((n + 1) * (1.0 - alpha) - 1e-12)
    if n == 0 or rank > n:
        return math.inf
    return float(sorted_scores[max(rank, 1) - 1])


def quantiles(scores: Sequence[Sequence[float]], alpha: float) -> np.ndarray:
    return np.array([quantile(s, alpha) for s in scores], dtype=np.float64)


def prediction_sets(proba: np.ndarray, scores: Sequence[Sequence[float]], alpha: float) -> np.ndarray:
    """Boolean [N, C]: class c is in the set of item i. Uncalibrated classes: argmax fallback."""
    proba = np.asarray(proba, dtype=np.float64)
    q = quantiles(scores, alpha)
    members = (1.0 - proba) <= q[None, :] + 1e-12
    empty = [c for c, s in enumerate(scores) if len(s) == 0]
    if empty and len(proba):
        is_argmax = proba.argmax(axis=1)[:, None] == np.arange(proba.shape[1])[None, :]
        members[:, empty] = is_argmax[:, empty]
    return members


def format_sets(members: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """``;``-joined class names of each set (most probable first is not implied: class order)."""
    return [
        ";".join(name for name, inside in zip(class_names, row, strict=True) if inside) for row in members
    ]


def coverage_report(
    members: np.ndarray, y: np.ndarray, class_names: Sequence[str], alpha: float
) -> dict[str, Any]:
    """Per-class coverage P(y in C(x) | y = c) and mean set size, on items with labels ``y``."""
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return {"alpha": alpha, "n_samples": 0, "coverage": None, "mean_set_size": None, "per_class": {}}
    covered = members[np.arange(len(y)), y]
    sizes = members.sum(axis=1)
    per_class: dict[str, Any] = {}
    for c, name in enumerate(class_names):
        mask = y == c
        per_class[name] = {
            "support": int(mask.sum()),
            "coverage": float(covered[mask].mean()) if mask.any() else None,
            "mean_set_size": float(sizes[mask].mean()) if mask.any() else None,
        }
    present = [row["coverage"] for row in per_class.values() if row["coverage"] is not None]
    return {
        "alpha": alpha,
        "n_samples": len(y),
        "coverage": float(covered.mean()),
        "mean_class_coverage": float(np.mean(present)) if present else None,
        "min_class_coverage": float(np.min(present)) if present else None,
        "mean_set_size": float(sizes.mean()),
        "empty_sets": int((sizes == 0).sum()),
        "per_class": per_class,
    }
