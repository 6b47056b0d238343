"""Post-hoc calibration and decision rules, fitted on held-out logits (methods brief §8).

- ``fit_temperature(logits, y)``: one scalar T > 0 minimising the NLL of softmax(z / T).
- ``parse_objective(text, class_names)``: ``macro_f1`` (default), ``balanced_accuracy``,
  ``minority_f1``, ``recall>=R[:class]``, ``precision>=P[:class]``; bad strings raise ConfigError.
- ``fit_rule(logits, y, objective, ...)``: binary, a threshold on the calibrated probability of one
  class; multiclass, per-class logit offsets (coordinate ascent with b_0 = 0, or post-hoc logit
  adjustment b_c = -tau log pi_c), whichever scores better on the data it is fitted on.

Scores are computed from a confusion matrix with NumPy (thousands of candidate rules are scored;
scikit-learn's per-call overhead would dominate); they match ``matcard.metrics``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from matcard.errors import ConfigError

OBJECTIVE_NAMES = ("macro_f1", "balanced_accuracy", "minority_f1")
_CONSTRAINT = re.compile(r"^(recall|precision)\s*>=\s*([^:]+?)\s*(?::\s*(.+))?$")
MAX_CANDIDATES = 400  # offsets tried per coordinate (spread over the switching points by rank)
MAX_THRESHOLDS = 20_000  # binary: every observed probability, up to this many


# --------------------------------------------------------------------------- temperature


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    return scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.exp(log_softmax(logits, temperature))


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / T)."""
    if len(y) == 0:
        return float("nan")
    return float(-log_softmax(logits, temperature)[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """T > 0 minimising the NLL of softmax(z / T) on held-out data (1.0 when there is nothing to fit).

    Optimised over log T (bounded to T in [0.01, 100]) so the search is scale-free.
    """
    from scipy.optimize import minimize_scalar

    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0 or (len(np.unique(y)) < 2 and np.allclose(logits, logits[:1])):
        return 1.0
    result = minimize_scalar(
        lambda log_t: nll(logits, y, math.exp(log_t)), bounds=(math.log(0.01), math.log(100.0)),
        method="bounded", options={"xatol": 1e-5},
    )  # fmt: skip
    temperature = float(math.exp(result.x))
    # never worse than leaving the model alone (a flat NLL surface can stop the search anywhere)
    return temperature if nll(logits, y, temperature) <= nll(logits, y, 1.0) else 1.0


# --------------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class Objective:
    """What a decision rule maximises. ``kind``: macro_f1 | balanced_accuracy | minority_f1 |
    recall | precision (the last two: reach ``value`` for class ``target``)."""

    kind: str
    target: int | None = None  # class index (minority_f1 / recall / precision)
    value: float | None = None
    text: str = "macro_f1"

    @property
    def constrained(self) -> bool:
        return self.kind in ("recall", "precision")


def check_objective_syntax(text: str) -> str:
    """Validate an objective string without knowing the classes (config validation)."""
    text = str(text).strip()
    if text in OBJECTIVE_NAMES:
        return text
    match = _CONSTRAINT.match(text)
    if match is None:
        raise ConfigError(
            f"decision.objective: {text!r} is not an objective; use one of {list(OBJECTIVE_NAMES)}, "
            "'recall>=R[:class]' or 'precision>=P[:class]'"
        )
    try:
        value = float(match.group(2))
    except ValueError:
        raise ConfigError(f"decision.objective: {match.group(2)!r} in {text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise ConfigError(
            f"decision.objective: {match.group(1)} >= {value:g} can never be met; R must lie in (0, 1]"
        )
    return text


def minority_class(class_counts: Any, n_classes: int) -> int:
    """The positive class of a binary task; otherwise the least frequent class in training."""
    if n_classes == 2:
        return 1
    counts = np.asarray(class_counts if class_counts is not None and len(class_counts) else [1] * n_classes)
    return int(np.argmin(counts))


def parse_objective(text: str, class_names: list[str], class_counts: Any = None) -> Objective:
    """The Objective of ``text`` for these classes; an unknown class raises ConfigError."""
    text = check_objective_syntax(text)
    default = minority_class(class_counts, len(class_names))
    if text in OBJECTIVE_NAMES:
        return Objective(text, default if text == "minority_f1" else None, None, text)
    match = _CONSTRAINT.match(text)
    assert match is not None  # checked above
    name = match.group(3)
    if name is not None and name not in class_names:
        raise ConfigError(
            f"decision.objective: class {name!r} in {text!r} is not a class of this task "
            f"(classes: {', '.join(class_names)})"
        )
    target = class_names.index(name) if name is not None else default
    return Objective(match.group(1), target, float(match.group(2)), text)


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_scores(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, f1) per class; 0 where undefined (scikit-learn's zero_division=0)."""
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return precision, recall, f1


def score(objective: Objective, y: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[bool, float]:
    """(constraint met, value): compared as a tuple, so meeting a constraint comes first.

    Unconstrained objectives are always met. ``recall>=R`` scores the precision of the target class
    once R is reached (its recall before); ``precision>=P`` scores recall once P is reached.
    """
    matrix = confusion(y, pred, n_classes)
    precision, recall, f1 = per_class_scores(matrix)
    support = matrix.sum(axis=1)
    if objective.kind == "macro_f1":
        scored = (support > 0) | (matrix.sum(axis=0) > 0)  # matcard.metrics' macro set
        return True, float(f1[scored].mean()) if scored.any() else 0.0
    if objective.kind == "balanced_accuracy":
        return True, float(recall[support > 0].mean()) if (support > 0).any() else 0.0
    c = int(objective.target or 0)
    if objective.kind == "minority_f1":
        return True, float(f1[c])
    assert objective.value is not None
    if objective.kind == "recall":
        met = bool(recall[c] >= objective.value - 1e-12)
        return met, float(precision[c] if met else recall[c])
    met = bool(precision[c] >= objective.value - 1e-12 and matrix[:, c].sum() > 0)
    return met, float(recall[c] if met else precision[c])


# --------------------------------------------------------------------------- rules


def predict_threshold(log_proba: np.ndarray, target: int, threshold: float) -> np.ndarray:
    """Binary: ``target`` where its calibrated probability >= threshold, else the other class."""
    other = 1 - target
    return np.where(np.exp(log_proba[:, target]) >= threshold, target, other)


def predict_offsets(log_proba: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return np.argmax(log_proba + np.asarray(offsets)[None, :], axis=1)


def _candidates(values: np.ndarray, limit: int = MAX_CANDIDATES) -> np.ndarray:
    """The distinct finite values, or ``limit`` of them evenly spaced in rank (observed values)."""
    unique = np.unique(values[np.isfinite(values)])
    if len(unique) > limit:
        unique = unique[np.unique(np.linspace(0, len(unique) - 1, limit).round().astype(np.int64))]
    return unique


def fit_threshold(
    log_proba: np.ndarray, y: np.ndarray, objective: Objective, target: int = 1
) -> tuple[float, tuple[bool, float]]:
    """The threshold on p_target that maximises the objective on (log_proba, y).

    Candidates are the observed probabilities (every distinct decision). ``recall>=R`` takes the
    largest threshold reaching it (the fewest positives called); ``precision>=P`` the smallest.
    Ties otherwise go to the threshold nearest 0.5 (the argmax rule's).
    """
    p = np.exp(log_proba[:, target])
    thresholds = _candidates(p, MAX_THRESHOLDS)
    if len(thresholds) == 0:
        return 0.5, score(objective, y, predict_threshold(log_proba, target, 0.5), 2)
    scores = [score(objective, y, np.where(p >= t, target, 1 - target), 2) for t in thresholds]
    if objective.constrained and any(met for met, _ in scores):
        met_at = [i for i, (met, _) in enumerate(scores) if met]
        best = max(met_at) if objective.kind == "recall" else min(met_at)
        return float(thresholds[best]), scores[best]
    best_score = max(scores)
    ties = [i for i, s in enumerate(scores) if s == best_score]
    best = min(ties, key=lambda i: abs(thresholds[i] - 0.5))
    return float(thresholds[best]), scores[best]


def _switch_points(log_proba: np.ndarray, offsets: np.ndarray, c: int) -> np.ndarray:
    """Offsets of class c at which an item's decision switches to or from c."""
    shifted = log_proba + offsets[None, :]
    others = np.delete(shifted, c, axis=1).max(axis=1)
    return others - log_proba[:, c]


def fit_offsets(
    log_proba: np.ndarray, y: np.ndarray, objective: Objective, rounds: int = 6
) -> tuple[np.ndarray, tuple[bool, float]]:
    """Per-class offsets b (b_0 = 0) by coordinate ascent on the objective.

    Each coordinate tries the points where some item's decision flips (just past each), so the
    search is exact per coordinate up to MAX_CANDIDATES quantiles. Constrained objectives move only
    the target class's offset: the largest offset reaching recall >= R (fewest items called), or the
    smallest reaching precision >= P.
    """
    n_classes = log_proba.shape[1]
    offsets = np.zeros(n_classes)
    best = score(objective, y, predict_offsets(log_proba, offsets), n_classes)
    if objective.constrained:
        c = int(objective.target or 0)
        trial = offsets.copy()
        points = _candidates(_switch_points(log_proba, offsets, c)) + 1e-9
        found: list[tuple[float, tuple[bool, float]]] = []
        for value in points:
            trial[c] = value
            found.append((float(value), score(objective, y, predict_offsets(log_proba, trial), n_classes)))
        met = [(v, s) for v, s in found if s[0]]
        if met:
            value, best = _pick(met, objective)
            offsets[c] = value
            return offsets - offsets[0], best
        value, best = max([*found, (0.0, best)], key=lambda item: (item[1], -abs(item[0])))
        offsets[c] = value
        return offsets - offsets[0], best
    for _ in range(rounds):
        improved = False
        for c in range(1, n_classes):
            trial = offsets.copy()
            for value in _candidates(_switch_points(log_proba, offsets, c)) + 1e-9:
                trial[c] = value
                candidate = score(objective, y, predict_offsets(log_proba, trial), n_classes)
                if candidate > best:
                    best, offsets, improved = candidate, trial.copy(), True
        if not improved:
            break
    return offsets, best


def _pick(
    met: list[tuple[float, tuple[bool, float]]], objective: Objective
) -> tuple[float, tuple[bool, float]]:
    """Among offsets meeting a constraint: recall, the smallest offset of the target class (fewest
    items called, like the largest threshold); precision, the largest (most items called)."""
    return min(met) if objective.kind == "recall" else max(met)


def fit_logit_adjustment(
    log_proba: np.ndarray, y: np.ndarray, objective: Objective, priors: np.ndarray
) -> tuple[float, tuple[bool, float]]:
    """tau in b_c = -tau log pi_c (post-hoc logit adjustment), tuned on a grid in [0, 3]."""
    n_classes = log_proba.shape[1]
    log_priors = np.log(np.clip(np.asarray(priors, dtype=np.float64), 1e-12, None))
    results = []
    for tau in np.round(np.arange(0.0, 3.0001, 0.1), 2):
        pred = predict_offsets(log_proba, -tau * log_priors)
        results.append((score(objective, y, pred, n_classes), -float(tau)))
    (best, neg_tau) = max(results)
    return -neg_tau, best


def fit_rule(log_proba: np.ndarray, y: np.ndarray, objective: Objective, class_counts: Any) -> dict[str, Any]:
    """The decision rule (a JSON-able dict) that maximises ``objective`` on calibrated log-probs."""
    n_classes = log_proba.shape[1]
    y = np.asarray(y, dtype=np.int64)
    argmax_score = score(objective, y, log_proba.argmax(axis=1), n_classes)
    if n_classes == 2:
        target = int(objective.target) if objective.target is not None else 1
        threshold, best = fit_threshold(log_proba, y, objective, target)
        rule: dict[str, Any] = {"kind": "threshold", "class_index": target, "threshold": threshold}
    else:
        offsets, best = fit_offsets(log_proba, y, objective)
        has_counts = class_counts is not None and len(class_counts)
        counts = np.asarray(class_counts if has_counts else np.ones(n_classes), dtype=np.float64)
        tau, adjusted = fit_logit_adjustment(log_proba, y, objective, counts / counts.sum())
        if adjusted >= best:  # the one-parameter rule wins ties: less to overfit
            offsets, best = -tau * np.log(np.clip(counts / counts.sum(), 1e-12, None)), adjusted
            offsets = offsets - offsets[0]
            rule = {"kind": "offsets", "method": "logit_adjustment", "tau": tau, "offsets": offsets.tolist()}
        else:
            rule = {"kind": "offsets", "method": "coordinate_ascent", "offsets": offsets.tolist()}
    rule["objective_met"] = bool(best[0])
    rule["validation_score"] = float(best[1])
    rule["argmax_validation_score"] = float(argmax_score[1])
    return rule


def apply_rule(rule: dict[str, Any] | None, log_proba: np.ndarray) -> np.ndarray:
    """Class indices under a fitted rule (argmax when there is none)."""
    if rule is None or rule.get("kind", "argmax") == "argmax" or len(log_proba) == 0:
        return log_proba.argmax(axis=1) if len(log_proba) else np.zeros(0, dtype=np.int64)
    if rule["kind"] == "threshold":
        return predict_threshold(log_proba, int(rule["class_index"]), float(rule["threshold"]))
    return predict_offsets(log_proba, np.asarray(rule["offsets"], dtype=np.float64))
