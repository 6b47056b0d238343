"""Collapse guard: the pure verdict on synthetic predictions, and real tiny training runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import matcard
from cli import app
from matcard import collapse
from matcard.losses import LOSSES
from matcard.losses.base import ImbalanceLoss

NAMES = ["a", "b", "c"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# all 288 AFLOW prototypes, binary "is cubic" (23 % positive): the reference magnitude loss
# predicts one class for every item from the first epoch
TINY = {
    "epochs": 2,
    "data.task": "spacegroup.number>=195",
    "trainer.patience": None,
    "trainer.threads": 1,
    "model.params": {"n_conv": 1, "hidden": 32},
}


def test_a_constant_predictor_is_flagged_and_a_varied_one_is_not():
    labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
    constant = collapse.assess(np.zeros(100, dtype=int), labels, NAMES)
    assert constant.collapsed and constant.selected_collapsed
    assert constant.fraction == 1.0 and constant.top_class == "a"
    varied = collapse.assess(labels, labels, NAMES)
    assert not varied.collapsed and varied.fraction == pytest.approx(0.8)


def test_threshold_is_inclusive_at_99_percent():
    labels = np.array([0] * 50 + [1] * 50)
    predicted = np.array([1] * 99 + [0])
    assert collapse.assess(predicted, labels, NAMES[:2]).collapsed
    predicted = np.array([1] * 98 + [0] * 2)
    assert not collapse.assess(predicted, labels, NAMES[:2]).collapsed


def test_one_class_in_the_labels_is_never_a_collapse():
    labels = np.zeros(50, dtype=int)
    report = collapse.assess(np.zeros(50, dtype=int), labels, NAMES, [1.0] * 10)
    assert not report.collapsed and report.fraction == 1.0


def test_training_that_ends_on_one_class_is_flagged_and_a_recovered_phase_is_not():
    labels = np.array([0] * 60 + [1] * 40)
    fine = np.array([0] * 55 + [1] * 45)
    # the selected checkpoint (an early epoch) is fine, but the last five epochs predicted one class
    stuck = collapse.assess(fine, labels, NAMES[:2], [0.6, 0.7, 1.0, 0.995, 0.99, 1.0, 1.0])
    assert stuck.collapsed and stuck.epochs_flagged and not stuck.selected_collapsed and stuck.epochs == 5
    # rare positives: the first epochs predict only the majority, then the model recovers
    recovered = collapse.assess(fine, labels, NAMES[:2], [1.0] * 6 + [0.9, 0.8])
    assert not recovered.collapsed and recovered.epochs == 0
    short = collapse.assess(fine, labels, NAMES[:2], [0.5, 1.0, 1.0, float("nan"), 1.0, 1.0, 1.0, 1.0])
    assert not short.collapsed and short.epochs == 4
    assert collapse.assess(fine, labels, NAMES[:2], [1.0] * 3, patience=3).collapsed


def test_realised_class_weights_are_read_defensively():
    assert collapse.realised_class_weights(object()) is None
    assert collapse.realised_class_weights(_Reweighted([10, 30])) == pytest.approx([2.0, 2 / 3])
    record = collapse.loss_record("x", {"t": 1}, _Reweighted([10, 10]))
    assert record == {"name": "x", "params": {"t": 1}, "realised_class_weights": [1.0, 1.0]}


class _Reweighted(ImbalanceLoss):
    """Inverse-frequency CE that reports its class weights the way reweighting losses will."""

    def compute(self, logits, target, embeddings):
        weights = self._weights().to(logits.dtype)
        return (weights[target] * F.cross_entropy(logits, target, reduction="none")).mean()

    def _weights(self) -> torch.Tensor:
        counts = self.class_counts.clamp_min(1.0)
        return counts.sum() / (self.n_classes * counts)

    def realised_class_weights(self) -> list[float]:
        return self._weights().tolist()


@pytest.fixture(scope="module")
def env(session_data_dir, file_mirror):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MATCARD_DATA_DIR", str(session_data_dir))
        patch.setenv("MATCARD_MIRROR", file_mirror)
        patch.setitem(LOSSES, "test_reweighted", _Reweighted)
        yield


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_the_reference_magnitude_loss_collapses_and_is_reported(env, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["train", "--out", str(out), "--loss", "magnitude", "--set", "loss.params.mode=replace", "--quiet",
         *[f"--set={k}={json.dumps(v)}" for k, v in TINY.items() if k != "epochs"], "--epochs", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = _metrics(out)
    assert metrics["collapsed"] is True
    assert metrics["collapse"]["fraction"] >= 0.99
    assert metrics["loss"] == {
        "name": "magnitude",
        "params": {"mode": "replace"},
        "realised_class_weights": None,
    }
    assert "collapsed to a constant predictor" in result.output and "'magnitude'" in result.output
    history = pd.read_csv(out / "history.csv")
    assert history["val_top_class_fraction"].between(0, 1).all() and len(history) == 2


def test_a_reweighting_loss_records_its_weights_and_the_verdict_matches_its_predictions(env, tmp_path):
    result = matcard.train(
        out=str(tmp_path / "run"), progress=False, **{**TINY, "loss.name": "test_reweighted"}
    )
    metrics = _metrics(result.run_dir)
    counts = metrics["meta"]["train_class_counts"]
    expected = _Reweighted(counts).realised_class_weights()
    assert metrics["loss"]["name"] == "test_reweighted"
    assert metrics["loss"]["realised_class_weights"] == pytest.approx(expected)
    frame = pd.read_parquet(result.run_dir / "predictions.parquet")
    val = frame[frame["split"] == "val"]
    shares = val[[c for c in val.columns if c.startswith("prob_")]].to_numpy().argmax(axis=1)
    fraction = np.bincount(shares).max() / len(shares)
    assert metrics["collapse"]["fraction"] == pytest.approx(fraction, abs=1e-6)
    assert metrics["collapsed"] == (fraction >= 0.99 or metrics["collapse"]["epochs_flagged"])
    history = pd.read_csv(result.run_dir / "history.csv")
    assert "val_top_class_fraction" in history.columns


def test_the_warning_says_whether_the_selected_checkpoint_itself_collapsed():
    labels = np.array([0] * 60 + [1] * 40)
    constant = collapse.assess(np.zeros(100, dtype=int), labels, NAMES[:2], [1.0] * 3)
    assert "ignores its input" in collapse.warning_text(constant, "magnitude")
    late = collapse.assess(np.array([0] * 55 + [1] * 45), labels, NAMES[:2], [0.6] + [1.0] * 6)
    text = collapse.warning_text(late, "magnitude")
    assert late.collapsed and "last 6 epoch(s)" in text and "predates the collapse" in text


@pytest.mark.slow
def test_the_default_magnitude_loss_learns_the_glass_window(env, tmp_path):
    # the documented check of the safe default: the full glass task, 5 epochs, shipped config
    out = tmp_path / "glass"
    result = CliRunner().invoke(
        app,
        ["train", "--config", str(CONFIGS / "glass_tg.yaml"), "--loss", "magnitude", "--epochs", "5",
         "--out", str(out), "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = _metrics(out)
    assert metrics["loss"]["name"] == "magnitude" and metrics["collapsed"] is False
    assert metrics["collapse"]["fraction"] < 0.9  # the window class (28.5 %) is predicted
    history = pd.read_csv(out / "history.csv")
    assert (history["val_top_class_fraction"] < 0.99).all()
    low, high = metrics["loss"]["realised_class_weights"]
    assert high > low  # the rarer window class carries more weight
    assert metrics["test"]["macro_f1"] > 0.7
