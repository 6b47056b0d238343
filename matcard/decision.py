"""The post-hoc decision layer of a model: temperature, decision rule, conformal sets (brief §8).

Fitted after training on held-out logits and stored as the ``decision`` section of ``bundle.json``:
the temperature and the rule on the validation split; the Mondrian conformal scores on the
calibration split (carved from the training portion, never seen by checkpoint selection), or on
validation when the run has none (then ``guarantee`` is false). ``evaluate``, ``predict`` and
``screen`` apply it; a bundle without one predicts argmax and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from matcard import calibration, conformal
from matcard.errors import UsageError

DEFAULT_ALPHA = 0.1
DECISION_MODES = ("tuned", "argmax")


@dataclass
class Decisions:
    """What a layer decided for a batch: calibrated probabilities, classes, optional sets."""

    proba: np.ndarray  # calibrated [N, C]
    predicted: np.ndarray  # [N] under the chosen rule
    argmax: np.ndarray  # [N]
    sets: np.ndarray | None = None  # bool [N, C] with an alpha


@dataclass
class DecisionLayer:
    class_names: list[str]
    temperature: float = 1.0
    objective: str = "macro_f1"
    rule: dict[str, Any] = field(default_factory=lambda: {"kind": "argmax"})
    conformal: dict[str, Any] | None = None  # alpha, scores (sorted, per class), calibrated_on, guarantee
    fitted_on: dict[str, Any] = field(default_factory=dict)

    # --- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "temperature": float(self.temperature),
            "objective": self.objective,
            "rule": self.rule,
            "conformal": self.conformal,
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_dict(cls, section: dict[str, Any] | None, class_names: list[str]) -> DecisionLayer | None:
        if not section:
            return None
        return cls(
            class_names=list(class_names),
            temperature=float(section.get("temperature", 1.0)),
            objective=str(section.get("objective", "macro_f1")),
            rule=dict(section.get("rule") or {"kind": "argmax"}),
            conformal=section.get("conformal"),
            fitted_on=dict(section.get("fitted_on") or {}),
        )

    def summary(self) -> dict[str, Any]:
        """The layer without its calibration scores (for metrics.json and reports)."""
        summary = self.to_dict()
        if self.conformal is not None:
            summary["conformal"] = {k: v for k, v in self.conformal.items() if k != "scores"}
        return summary

    # --- application ------------------------------------------------------------------------
    def decide(self, logits: np.ndarray, mode: str = "tuned", alpha: float | None = None) -> Decisions:
        log_proba = calibration.log_softmax(logits, self.temperature)
        proba = np.exp(log_proba)
        argmax = log_proba.argmax(axis=1) if len(log_proba) else np.zeros(0, dtype=np.int64)
        predicted = calibration.apply_rule(self.rule, log_proba) if mode == "tuned" else argmax
        sets = None
        if alpha is not None:
            sets = conformal.prediction_sets(proba, self.require_scores(), alpha)
        return Decisions(proba, predicted, argmax, sets)

    def require_scores(self) -> list[list[float]]:
        if not self.conformal or "scores" not in self.conformal:
            raise UsageError(
                "--alpha: this model's decision layer has no conformal calibration; run matcard calibrate"
            )
        return self.conformal["scores"]


def argmax_decisions(logits: np.ndarray) -> Decisions:
    """A model without a decision layer: softmax probabilities, argmax classes."""
    proba = calibration.softmax(logits) if len(logits) else np.zeros_like(logits, dtype=np.float64)
    argmax = proba.argmax(axis=1) if len(proba) else np.zeros(0, dtype=np.int64)
    return Decisions(proba, argmax, argmax)


def check_alpha(alpha: float | None, field_name: str = "--alpha") -> None:
    if alpha is not None and not 0.0 < float(alpha) < 1.0:
        raise UsageError(f"{field_name}: must lie strictly between 0 and 1, got {alpha}")


def check_mode(mode: str | None) -> None:
    if mode is not None and mode not in DECISION_MODES:
        raise UsageError(f"--decision: must be one of {', '.join(DECISION_MODES)}, got {mode!r}")


def fit_decision(
    val_logits: np.ndarray,
    val_y: np.ndarray,
    cal_logits: np.ndarray | None,
    cal_y: np.ndarray | None,
    class_names: list[str],
    class_counts: Any,
    *,
    objective: str = "macro_f1",
    alpha: float = DEFAULT_ALPHA,
) -> DecisionLayer:
    """Fit temperature and rule on validation, conformal scores on the calibration split."""
    parsed = calibration.parse_objective(objective, class_names, class_counts)
    check_alpha(alpha, "decision.alpha")
    val_y = np.asarray(val_y, dtype=np.int64)
    temperature = calibration.fit_temperature(val_logits, val_y)
    rule = calibration.fit_rule(calibration.log_softmax(val_logits, temperature), val_y, parsed, class_counts)
    own_split = cal_logits is not None and cal_y is not None and len(cal_y) > 0
    scores_logits, scores_y = (cal_logits, cal_y) if own_split else (val_logits, val_y)
    assert scores_logits is not None and scores_y is not None
    n_classes = len(class_names)
    scores = conformal.class_scores(calibration.softmax(scores_logits, temperature), scores_y, n_classes)
    fallback = [class_names[c] for c, s in enumerate(scores) if len(s) == 0]
    layer_conformal = {
        "alpha": float(alpha),
        "calibrated_on": "calibration" if own_split else "val",
        "guarantee": bool(own_split),
        "n_per_class": [len(s) for s in scores],
        "fallback_classes": fallback,  # no calibration item: argmax for them, no guarantee
        "scores": scores,
    }
    return DecisionLayer(
        class_names=list(class_names),
        temperature=temperature,
        objective=parsed.text,
        rule=rule,
        conformal=layer_conformal,
        fitted_on={
            "temperature": "val",
            "rule": "val",
            "n_val": len(val_y),
            "n_calibration": len(cal_y) if own_split and cal_y is not None else 0,
        },
    )


def split_report(
    layer: DecisionLayer | None,
    logits: np.ndarray,
    y: np.ndarray,
    class_names: list[str],
    class_counts: Any,
    alpha: float | None = None,
) -> dict[str, Any]:
    """argmax and tuned metric blocks, ECE before / after, conformal coverage, ranking metrics."""
    from matcard.metrics import classification_metrics, minority_classes, ranking_metrics

    y = np.asarray(y, dtype=np.int64)
    raw = argmax_decisions(logits)
    report: dict[str, Any] = {"argmax": classification_metrics(y, raw.proba, class_names)}
    has_counts = class_counts is not None and len(class_counts)
    counts = class_counts if has_counts else np.bincount(y, minlength=len(class_names))
    minority = minority_classes(counts)
    if layer is None:
        report["decision_layer"] = False
        report["ranking"] = ranking_metrics(y, raw.proba, class_names, minority)
        return report
    alpha = alpha if alpha is not None else (layer.conformal or {}).get("alpha", DEFAULT_ALPHA)
    decided = layer.decide(logits, "tuned", alpha if layer.conformal else None)
    report["decision_layer"] = True
    report["tuned"] = classification_metrics(y, decided.proba, class_names, pred=decided.predicted)
    report["calibration"] = {
        "temperature": layer.temperature,
        "ece_before": report["argmax"]["ece"],
        "ece_after": report["tuned"]["ece"],
        "nll_before": calibration.nll(logits, y) if len(y) else None,
        "nll_after": calibration.nll(logits, y, layer.temperature) if len(y) else None,
    }
    if decided.sets is not None:
        report["conformal"] = conformal.coverage_report(decided.sets, y, class_names, float(alpha))
        report["conformal"]["guarantee"] = bool(layer.conformal and layer.conformal.get("guarantee"))
    report["ranking"] = ranking_metrics(y, decided.proba, class_names, minority)
    return report


def decision_metrics(
    layer: DecisionLayer | None,
    logits: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    class_names: list[str],
    class_counts: Any,
) -> dict[str, Any]:
    """The ``decision`` block of metrics.json: the layer's summary, flags, and a split_report for
    val and test (argmax and tuned metrics side by side)."""
    flags: list[str] = []
    if layer is None:
        flags.append("no_decision_layer")
    elif layer.conformal is not None:
        if not layer.conformal.get("guarantee"):
            flags.append("conformal_calibrated_on_val")
        flags += [f"conformal_fallback:{name}" for name in layer.conformal.get("fallback_classes", [])]
        if not layer.rule.get("objective_met", True):
            flags.append("objective_not_met_on_val")
    block: dict[str, Any] = {"layer": None if layer is None else layer.summary(), "flags": flags}
    for name in ("val", "test"):
        if name in logits:
            block[name] = split_report(layer, logits[name], labels[name], class_names, class_counts)
    return block


def fit_for_splits(
    logits: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    class_names: list[str],
    class_counts: Any,
    *,
    objective: str,
    alpha: float,
) -> tuple[DecisionLayer, dict[str, Any]]:
    """Fit the layer on ``val`` (+ ``calibration`` when present) and report it (decision_metrics)."""
    layer = fit_decision(
        logits["val"], labels["val"], logits.get("calibration"), labels.get("calibration"),
        class_names, class_counts, objective=objective, alpha=alpha,
    )  # fmt: skip
    return layer, decision_metrics(layer, logits, labels, class_names, class_counts)
