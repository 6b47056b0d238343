"""Decision layer: temperature, thresholds / offsets, Mondrian conformal sets, ranking metrics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

from matcard import calibration, conformal
from matcard.decision import fit_decision, split_report
from matcard.errors import ConfigError
from matcard.metrics import ranking_metrics


def _binary_scores(seed: int, n: int = 300, rate: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(np.int64)
    margin = rng.normal(-2.0 + 2.5 * y, 1.0)  # logit of the positive class against the negative
    return np.c_[np.zeros(n), margin], y


def _multiclass(seed: int, n: int, priors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items from Gaussian classes: returns (logits = log posterior, y, log-likelihoods)."""
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0], [1.6, 0.0], [0.0, 1.6]])
    y = rng.choice(len(priors), size=n, p=priors)
    x = means[y] + rng.normal(size=(n, 2))
    log_lik = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1)
    return log_lik + np.log(priors)[None, :], y, log_lik


def test_threshold_search_recovers_the_best_macro_f1_threshold() -> None:
    logits, y = _binary_scores(0)
    log_proba = calibration.log_softmax(logits)
    objective = calibration.parse_objective("macro_f1", ["neg", "pos"])
    threshold, (_, best) = calibration.fit_threshold(log_proba, y, objective)
    p = np.exp(log_proba[:, 1])
    brute = max(f1_score(y, (p >= t).astype(int), average="macro") for t in np.unique(p))
    assert best == pytest.approx(brute, abs=1e-12)
    assert f1_score(y, (p >= threshold).astype(int), average="macro") == pytest.approx(brute, abs=1e-12)
    assert best > f1_score(y, (p >= 0.5).astype(int), average="macro")  # tuning helps on rare positives


def test_threshold_matches_scikit_learn_tuned_threshold_classifier() -> None:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.model_selection import TunedThresholdClassifierCV

    class ScoreColumn(ClassifierMixin, BaseEstimator):  # a prefit "model" whose score is the input
        def fit(self, x: np.ndarray, y: np.ndarray) -> ScoreColumn:
            self.classes_ = np.array([0, 1])
            return self

        def predict_proba(self, x: np.ndarray) -> np.ndarray:
            return np.c_[1 - x[:, 0], x[:, 0]]

        def predict(self, x: np.ndarray) -> np.ndarray:
            return (x[:, 0] >= 0.5).astype(int)

    for seed, (ours, theirs) in enumerate(
        [("macro_f1", "f1_macro"), ("balanced_accuracy", "balanced_accuracy"), ("minority_f1", "f1")]
    ):
        logits, y = _binary_scores(seed + 1)
        p = calibration.softmax(logits)[:, 1]
        objective = calibration.parse_objective(ours, ["neg", "pos"])
        threshold, (_, best) = calibration.fit_threshold(np.log(np.c_[1 - p, p]), y, objective)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tuned = TunedThresholdClassifierCV(
                ScoreColumn().fit(p[:, None], y), scoring=theirs, cv="prefit", refit=False,
                thresholds=np.unique(p),
            ).fit(p[:, None], y)  # fmt: skip
        assert best == pytest.approx(tuned.best_score_, abs=1e-9)
        if ours == "macro_f1":  # unique optimum on this draw: the same decisions (up to float round-off)
            assert ((p >= threshold - 1e-12) == (p >= tuned.best_threshold_)).all()


def test_recall_objective_takes_the_largest_threshold_reaching_it() -> None:
    logits, y = _binary_scores(3)
    log_proba = calibration.log_softmax(logits)
    p = np.exp(log_proba[:, 1])
    objective = calibration.parse_objective("recall>=0.9:pos", ["neg", "pos"])
    threshold, (met, _) = calibration.fit_threshold(log_proba, y, objective)
    reaching = [t for t in np.unique(p) if recall_score(y, (p >= t).astype(int)) >= 0.9]
    assert met and threshold == pytest.approx(max(reaching))


def test_offsets_recover_the_bayes_rule_for_balanced_accuracy() -> None:
    priors = np.array([0.8, 0.15, 0.05])
    logits, y, _ = _multiclass(0, 6000, priors)
    layer = fit_decision(logits, y, None, None, ["a", "b", "c"], priors * 1000, objective="balanced_accuracy")
    # the optimum of balanced accuracy is argmax of the likelihood: offsets -log(prior) (+ const)
    optimal = -np.log(priors) + np.log(priors[0])
    test_logits, test_y, log_lik = _multiclass(1, 20000, priors)
    bayes = balanced_accuracy_score(test_y, log_lik.argmax(axis=1))
    tuned = balanced_accuracy_score(test_y, layer.decide(test_logits).predicted)
    assert tuned == pytest.approx(bayes, abs=0.01)
    assert balanced_accuracy_score(test_y, test_logits.argmax(axis=1)) < bayes - 0.05  # argmax is far off
    assert np.allclose(layer.rule["offsets"], optimal, atol=0.5)


def test_coordinate_ascent_reaches_a_known_optimum() -> None:
    priors = np.array([0.7, 0.2, 0.1])
    logits, y, _ = _multiclass(2, 3000, priors)
    log_proba = calibration.log_softmax(logits)
    objective = calibration.parse_objective("macro_f1", ["a", "b", "c"])
    offsets, (_, best) = calibration.fit_offsets(log_proba, y, objective)
    assert offsets[0] == 0.0
    reached = f1_score(y, calibration.predict_offsets(log_proba, offsets), average="macro")
    assert best == pytest.approx(reached)
    grid = np.linspace(-1, 4, 16)  # an exhaustive grid cannot beat the ascent by more than its step
    brute = max(
        f1_score(y, calibration.predict_offsets(log_proba, np.array([0, b1, b2])), average="macro")
        for b1 in grid
        for b2 in grid
    )
    assert best >= brute - 1e-9


def test_temperature_scaling_fixes_an_overconfident_model_and_keeps_the_argmax() -> None:
    priors = np.array([0.5, 0.3, 0.2])
    logits, y, _ = _multiclass(4, 4000, priors)
    overconfident = 4.0 * logits
    temperature = calibration.fit_temperature(overconfident, y)
    assert temperature == pytest.approx(4.0, rel=0.1)
    assert calibration.nll(overconfident, y, temperature) < calibration.nll(overconfident, y) - 0.1
    calibrated = calibration.softmax(overconfident, temperature)
    assert (calibrated.argmax(axis=1) == overconfident.argmax(axis=1)).all()
    report = split_report(
        fit_decision(overconfident, y, None, None, ["a", "b", "c"], priors), overconfident, y,
        ["a", "b", "c"], priors,
    )  # fmt: skip
    assert report["calibration"]["ece_after"] < report["calibration"]["ece_before"]


def test_mondrian_coverage_holds_for_every_class_over_repeated_draws() -> None:
    priors = np.array([0.75, 0.2, 0.05])
    alpha = 0.1
    coverage = []
    for draw in range(60):
        cal_logits, cal_y, _ = _multiclass(100 + draw, 3000, priors)
        test_logits, test_y, _ = _multiclass(1000 + draw, 3000, priors)
        scores = conformal.class_scores(calibration.softmax(cal_logits), cal_y, 3)
        members = conformal.prediction_sets(calibration.softmax(test_logits), scores, alpha)
        report = conformal.coverage_report(members, test_y, ["a", "b", "c"], alpha)
        coverage.append([report["per_class"][name]["coverage"] for name in "abc"])
    assert np.abs(np.mean(coverage, axis=0) - (1 - alpha)).max() < 0.02


def test_mondrian_sets_match_crepes() -> None:
    crepes = pytest.importorskip("crepes")
    priors = np.array([0.6, 0.3, 0.1])
    cal_logits, cal_y, _ = _multiclass(7, 800, priors)
    test_logits, _, _ = _multiclass(8, 500, priors)
    cal_p, test_p = calibration.softmax(cal_logits), calibration.softmax(test_logits)
    ours = conformal.prediction_sets(test_p, conformal.class_scores(cal_p, cal_y, 3), 0.1)
    classifier = crepes.ConformalClassifier().fit(1 - cal_p[np.arange(len(cal_y)), cal_y], bins=cal_y)
    theirs = np.column_stack([
        classifier.predict_set(1 - test_p[:, [c]], bins=np.full(len(test_p), c), confidence=0.9,
                               smoothing=False)[:, 0]
        for c in range(3)
    ])  # fmt: skip
    assert (ours == theirs.astype(bool)).all()


def test_quantile_follows_the_finite_sample_rank() -> None:
    scores = [0.1, 0.2, 0.3, 0.4]
    assert conformal.quantile(scores, 0.25) == 0.4  # ceil(5 * 0.75) = 4th smallest
    assert conformal.quantile(scores, 0.1) == np.inf  # ceil(5 * 0.9) = 5 > 4
    assert conformal.quantile([], 0.1) == np.inf


def test_class_without_calibration_items_falls_back_to_argmax() -> None:
    priors = np.array([0.6, 0.3, 0.1])
    logits, y, _ = _multiclass(9, 600, priors)
    cal_logits, cal_y, _ = _multiclass(10, 300, priors)
    keep = cal_y != 2
    layer = fit_decision(logits, y, cal_logits[keep], cal_y[keep], ["a", "b", "c"], priors)
    assert layer.conformal["fallback_classes"] == ["c"] and layer.conformal["guarantee"]
    decided = layer.decide(logits, alpha=0.1)
    assert (decided.sets[:, 2] == (decided.argmax == 2)).all()


@pytest.mark.parametrize(
    ("text", "words"),
    [("recall>=1.1", "never be met"), ("recall>=0.9:nope", "not a class"), ("f2", "not an objective"),
     ("precision>=x", "not a number")],
)  # fmt: skip
def test_bad_objectives_fail_naming_the_field(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        calibration.parse_objective(text, ["neg", "pos"])
    assert "decision.objective" in str(caught.value)


def test_ranking_metrics_by_hand() -> None:
    y = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 1] * 10)
    p1 = np.linspace(1, 0, 100)  # ranked in input order
    proba = np.c_[1 - p1, p1]
    report = ranking_metrics(y, proba, ["neg", "pos"], [1])["pos"]
    assert report["base_rate"] == pytest.approx(0.3)
    top5 = report["at_5pct"]
    assert top5["k"] == 5 and top5["precision"] == pytest.approx(2 / 5)
    assert top5["recall"] == pytest.approx(2 / 30) and top5["enrichment"] == pytest.approx(0.4 / 0.3)
    assert report["at_1pct"]["precision"] == 1.0
