"""The decision layer end to end: train fits it, evaluate / calibrate / screen / predict apply it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli import app
from matcard.bundle import NoDecisionLayerWarning, load_model, set_decision
from matcard.fileio import sha256_file

FAST = ["--set", "data.limit=150", "--set", "trainer.threads=1", "--set", "trainer.patience=null", "--quiet"]


@pytest.fixture(scope="module")
def env(session_data_dir, file_mirror):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MATCARD_DATA_DIR", str(session_data_dir))
        patch.setenv("MATCARD_MIRROR", file_mirror)
        yield


@pytest.fixture(scope="module")
def run(env, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("decision") / "run"
    result = CliRunner().invoke(app, ["train", "--out", str(run_dir), "--epochs", "2", *FAST])
    assert result.exit_code == 0, result.output
    return run_dir, result


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_train_fits_the_layer_and_reports_both_decisions(run):
    run_dir, result = run
    assert "argmax vs tuned" in result.output and "temperature" in result.output
    metrics = _metrics(run_dir)
    block = metrics["decision"]
    assert block["layer"]["rule"]["kind"] == "offsets"  # 7 crystal systems
    assert block["layer"]["rule"]["method"] in ("coordinate_ascent", "logit_adjustment")
    assert block["layer"]["conformal"]["calibrated_on"] == "calibration"
    for split in ("val", "test"):
        report = block[split]
        assert report["argmax"] == metrics[split]  # the top-level blocks stay the argmax ones
        assert set(report["tuned"]["per_class"]) == set(metrics[split]["per_class"])
        assert report["calibration"]["ece_before"] == metrics[split]["ece"]
        assert "ece_after" in report["calibration"]
        assert set(report["conformal"]["per_class"]) == set(metrics[split]["per_class"])
        counts = metrics["meta"]["train_class_counts"]
        majority = metrics["meta"]["class_names"][counts.index(max(counts))]
        assert majority not in report["ranking"] and len(report["ranking"]) == 6
        assert {"at_1pct", "at_5pct", "at_10pct", "pr_auc"} <= set(next(iter(report["ranking"].values())))
    # the tuned rule never scores below argmax on the split it was chosen on
    assert block["val"]["tuned"]["macro_f1"] >= block["val"]["argmax"]["macro_f1"] - 1e-12
    split = json.loads((run_dir / "splits/split.json").read_text())
    assert split["ids"]["calibration"] and not set(split["ids"]["calibration"]) & set(split["ids"]["train"])
    predictions = pd.read_parquet(run_dir / "predictions.parquet")
    assert set(predictions["split"]) == {"calibration", "val", "test"}
    assert {"predicted_tuned", "logit_cubic"} <= set(predictions.columns)


def test_a_class_without_calibration_items_is_reported_and_falls_back(run):
    run_dir, _ = run
    layer = _metrics(run_dir)["decision"]["layer"]["conformal"]
    names = _metrics(run_dir)["meta"]["class_names"]
    empty = [name for name, n in zip(names, layer["n_per_class"], strict=True)
             if n == 0]  # fmt: skip
    assert empty, "150 AFLOW prototypes leave the rare triclinic class out of the calibration split"
    assert layer["fallback_classes"] == empty
    assert {f"conformal_fallback:{name}" for name in empty} <= set(_metrics(run_dir)["decision"]["flags"])
    model = load_model(run_dir / "model")
    import numpy as np

    logits = np.random.default_rng(0).normal(size=(50, len(model.class_names)))
    decided = model.decide_logits(logits, alpha=0.1)
    for name in empty:
        c = model.class_names.index(name)
        assert (decided.sets[:, c] == (decided.argmax == c)).all()


def test_evaluate_json_shows_both_decisions(run):
    run_dir, _ = run
    result = CliRunner().invoke(app, ["evaluate", str(run_dir), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    recorded = _metrics(run_dir)
    assert evaluated["metrics"] == recorded["test"]
    assert evaluated["decision"]["argmax"] == recorded["test"]
    tuned = recorded["decision"]["test"]["tuned"]
    assert evaluated["decision"]["tuned"]["confusion_matrix"] == tuned["confusion_matrix"]
    assert evaluated["decision"]["tuned"]["ece"] == pytest.approx(tuned["ece"])
    assert (
        evaluated["decision"]["conformal"]["per_class"]
        == recorded["decision"]["test"]["conformal"]["per_class"]
    )


def test_screen_writes_tuned_classes_and_prediction_sets(run, shared_data, tmp_path):
    run_dir, _ = run
    out = tmp_path / "screen.csv"
    args = ["screen", str(run_dir / "model"), str(shared_data / "cgcnn_sample_classification"),
            "--out", str(out), "--alpha", "0.1", "--class", "cubic", "--top-k", "5", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out, dtype={"id": str})
    assert {"predicted_class", "argmax_class", "prediction_set", "prob_cubic"} <= set(frame.columns)
    assert len(frame) == 10 and frame["prediction_set"].notna().all()
    model = load_model(run_dir / "model")
    assert all(set(s.split(";")) <= set(model.class_names) for s in frame["prediction_set"])
    shortlist = pd.read_csv(out.with_name("screen.shortlist.csv"))
    assert shortlist["prob_cubic"].is_monotonic_decreasing  # ranked by calibrated probability
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["decision"] == "tuned" and summary["alpha"] == 0.1
    # the same numbers through the Python API
    table = model.predict(sorted((shared_data / "cgcnn_sample_classification").glob("*.cif")), alpha=0.1)
    merged = frame.merge(table, on="id", suffixes=("", "_api"))
    assert (merged["prediction_set"] == merged["prediction_set_api"]).all()
    assert (merged["predicted_class"] == merged["predicted_class_api"]).all()
    assert (merged["prob_cubic"] - merged["prob_cubic_api"]).abs().max() < 1e-6


def test_calibrate_refits_without_retraining(run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(run[0], run_dir)
    weights = sha256_file(run_dir / "model" / "weights.pt")
    before = _metrics(run_dir)
    result = CliRunner().invoke(
        app, ["calibrate", str(run_dir), "--objective", "balanced_accuracy", "--alpha", "0.2", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    model = load_model(run_dir / "model")  # re-sealed: the checksums still verify
    assert model.decision.objective == "balanced_accuracy" and model.decision.conformal["alpha"] == 0.2
    after = _metrics(run_dir)
    assert after["test"] == before["test"] and after["decision"]["test"]["conformal"]["alpha"] == 0.2
    assert sha256_file(run_dir / "model" / "weights.pt") == weights


@pytest.mark.parametrize(
    ("command", "words"),
    [(["--set", "decision.objective=recall>=1.1"], "never be met"),
     (["--set", "decision.objective=recall>=0.9:nope"], "not a class"),
     (["--set", "data.calibration_fraction=0.7"], "calibration_fraction")],
)  # fmt: skip
def test_bad_decision_settings_fail_before_training(env, tmp_path, command, words):
    out = tmp_path / "bad"
    result = CliRunner().invoke(app, ["train", "--out", str(out), "--epochs", "1", *FAST, *command])
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert not (out / "checkpoints").exists() and not (out / "model").exists()


def test_calibrate_refuses_bad_objectives_and_leaves_the_bundle(run):
    run_dir, _ = run
    bundle = (run_dir / "model" / "bundle.json").read_bytes()
    for objective, words in (("recall>=1.1", "never be met"), ("precision>=0.5:nope", "not a class")):
        result = CliRunner().invoke(app, ["calibrate", str(run_dir), "--objective", objective])
        assert result.exit_code == 2 and words in result.output
    result = CliRunner().invoke(
        app, ["screen", str(run_dir), str(run_dir), "--out", "x.csv", "--alpha", "1.5"]
    )
    assert result.exit_code == 2 and "--alpha" in result.output
    assert (run_dir / "model" / "bundle.json").read_bytes() == bundle


def test_an_old_bundle_without_a_layer_predicts_argmax_and_says_so(run, shared_data, tmp_path):
    bundle = tmp_path / "old"
    shutil.copytree(run[0] / "model", bundle)
    set_decision(bundle, None)  # what a bundle written before the decision layer looks like
    model = load_model(bundle)
    assert model.decision is None
    with pytest.warns(NoDecisionLayerWarning):
        table = model.predict(sorted((shared_data / "cgcnn_sample_classification").glob("*.cif"))[:3])
    assert (table["predicted_class"] == table["argmax_class"]).all()
    out = tmp_path / "old.csv"
    inputs = str(shared_data / "cgcnn_sample_classification")
    result = CliRunner().invoke(app, ["screen", str(bundle), inputs, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert "no decision layer" in result.output
    assert json.loads(result.stdout[result.stdout.index("{") :])["decision"] == "argmax (no decision layer)"
    refused = CliRunner().invoke(
        app, ["screen", str(bundle), inputs, "--out", str(out), "--decision", "tuned"]
    )
    assert refused.exit_code == 2 and "no decision layer" in refused.output


def test_the_calibration_split_leaves_val_and_test_as_they_were(env, tmp_path):
    from matcard.config import load_config
    from matcard.data_prep import prepare_data

    parts = {}
    for fraction in (0.0, 0.1):
        config = load_config(overrides={"data.limit": 150, "data.calibration_fraction": fraction})
        data = prepare_data(config, tmp_path / str(fraction), progress=False)
        parts[fraction] = data.split
    assert (parts[0.0]["val"] == parts[0.1]["val"]).all() and (parts[0.0]["test"] == parts[0.1]["test"]).all()
    assert len(parts[0.0]["calibration"]) == 0
    assert abs(len(parts[0.1]["calibration"]) - 15) <= 2  # 10 % of 150, per-class rounding
    train = set(parts[0.1]["train"]) | set(parts[0.1]["calibration"])
    assert train == set(parts[0.0]["train"])


@pytest.mark.slow
def test_perov5_gapped_train_evaluate_screen(env, shared_data, tmp_path):
    """The screening case on real data: rare gapped perovskites (3.9 %), tiny budget."""
    run_dir = tmp_path / "perov5"
    result = CliRunner().invoke(
        app,
        ["train", "--config", "configs/perov5_gapped.yaml", "--out", str(run_dir), "--epochs", "1",
         "--set", "data.limit=600", "--set", "trainer.threads=1", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    evaluated = json.loads(CliRunner().invoke(app, ["evaluate", str(run_dir), "--json", "--quiet"]).stdout)
    assert evaluated["decision"]["decision_layer"] and {"argmax", "tuned"} <= set(evaluated["decision"])
    n_test = evaluated["metrics"]["n_samples"]
    assert evaluated["decision"]["ranking"]["gapped"]["at_5pct"]["k"] == max(1, round(0.05 * n_test))
    layer = load_model(run_dir).decision
    assert layer.rule["kind"] == "threshold" and layer.rule["class_index"] == 1
    out = tmp_path / "poscar.parquet"
    screened = CliRunner().invoke(
        app, ["screen", str(run_dir / "model"), str(shared_data / "alignn_sample_poscar"), "--out", str(out),
              "--alpha", "0.1"],
    )  # fmt: skip
    assert screened.exit_code == 0, screened.output
    frame = pd.read_parquet(out)
    assert len(frame) > 0 and frame["prediction_set"].str.len().gt(0).all()
