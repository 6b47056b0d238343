"""End-to-end training on the real embedded data (288 AFLOW prototypes), kept small and fast."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

import matcard
from matcard.errors import ConfigError, UsageError
from matcard.run_state import clear_run
from matcard.training import evaluate, resolve_run

# Small but real: a stratified 150-structure subset, no early stopping, one thread.
FAST = {"epochs": 4, "data.limit": 150, "trainer.patience": None, "trainer.threads": 1}


@pytest.fixture(scope="module")
def env(session_data_dir, file_mirror):
    with pytest.MonkeyPatch.context() as patch:  # module scope: the autouse fixture is per test
        patch.setenv("MATCARD_DATA_DIR", str(session_data_dir))
        patch.setenv("MATCARD_MIRROR", file_mirror)
        yield


@pytest.fixture(scope="module")
def run(env, tmp_path_factory):
    return matcard.train(out=str(tmp_path_factory.mktemp("runs") / "run"), progress=False, **FAST)


def _history(run_dir):
    with open(run_dir / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_run_directory_is_complete(run):
    d = run.run_dir
    for name in (
        "config.yaml",
        "history.csv",
        "metrics.json",
        "confusion_matrix.png",
        "per_class_recall.png",
        "model/bundle.json",
        "model/weights.pt",
        "splits/split.json",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
        "run.json",
    ):
        assert (d / name).is_file(), name
    metrics = json.loads((d / "metrics.json").read_text())
    for section in ("val", "test"):
        for key in (
            "accuracy",
            "balanced_accuracy",
            "macro_f1",
            "mcc",
            "roc_auc_macro",
            "pr_auc_macro",
            "ece",
        ):
            assert key in metrics[section]
        assert set(metrics[section]["per_class"]) == set(run.model.class_names)
    assert metrics == run.metrics
    assert [int(r["epoch"]) for r in _history(d)] == [0, 1, 2, 3]
    assert json.loads((d / "run.json").read_text())["status"] == "complete"
    resolved = yaml.safe_load((d / "config.yaml").read_text())
    assert resolved["trainer"]["epochs"] == 4 and resolved["out"] == str(d)


def test_split_is_stratified_disjoint_and_saved(run):
    split = json.loads((run.run_dir / "splits/split.json").read_text())
    parts = {name: set(split["ids"][name]) for name in ("train", "val", "test", "calibration")}
    assert sum(len(p) for p in parts.values()) == len(set().union(*parts.values())) == 150  # disjoint
    meta = run.metrics["meta"]
    assert (meta["n_train"], meta["n_val"], meta["n_test"]) == tuple(
        len(parts[n]) for n in ("train", "val", "test")
    )
    counts = np.array(meta["train_class_counts"])
    assert (counts > 0).sum() >= 6  # every class but possibly the 4-member triclinic one


def test_best_validation_checkpoint_is_the_one_bundled(run):
    history = _history(run.run_dir)
    f1 = [float(r["val_macro_f1"]) for r in history]
    assert run.best_epoch == int(np.argmax(f1))
    # the bundle's own validation score is the best epoch's, so its weights are the best checkpoint's
    assert run.metrics["val"]["macro_f1"] == pytest.approx(max(f1), abs=1e-5)


def test_evaluate_reproduces_the_recorded_test_metrics(run):
    result = evaluate(run.run_dir, progress=False)
    assert result["split"] == "test"
    assert result["metrics"] == run.metrics["test"]
    assert evaluate(run.run_dir / "model", split="val", progress=False)["metrics"] == run.metrics["val"]


def test_same_seed_same_run_and_resume_extends_it(env, tmp_path):
    short = {**FAST, "epochs": 2}
    a = matcard.train(out=str(tmp_path / "a"), progress=False, **short)
    b = matcard.train(out=str(tmp_path / "b"), progress=False, **short)
    assert _history(a.run_dir)[-1]["train_loss"] == _history(b.run_dir)[-1]["train_loss"]
    assert a.metrics["test"] == b.metrics["test"]
    extended = matcard.train(out=str(tmp_path / "a"), resume=True, epochs=3, progress=False)
    assert extended.resumed
    assert [int(r["epoch"]) for r in _history(extended.run_dir)] == [0, 1, 2]
    assert [r["train_loss"] for r in _history(extended.run_dir)][:2] == [
        r["train_loss"] for r in _history(b.run_dir)
    ]
    # a completed run asked to resume again is returned as it is
    again = matcard.train(out=str(tmp_path / "a"), resume=True, progress=False)
    assert again.metrics == extended.metrics


def test_refusals_happen_before_any_work(env, run, tmp_path):
    refusal = r"already holds a complete run.*--resume.*--overwrite.*another --out"
    with pytest.raises(UsageError, match=refusal):
        matcard.train(out=str(run.run_dir), progress=False)
    with pytest.raises(UsageError, match="pass one of them"):
        matcard.train(out=str(run.run_dir), resume=True, overwrite=True, progress=False)
    with pytest.raises(ConfigError, match=r"loss\.name"):
        matcard.train(out=str(run.run_dir), resume=True, loss="focal", progress=False)
    with pytest.raises(ConfigError, match="unknown loss"):
        matcard.train(out=str(tmp_path / "x"), loss="no-such-loss", progress=False)
    with pytest.raises(ConfigError, match=r"model\.params"):
        matcard.train(out=str(tmp_path / "x"), **{"model.params": {"depth": 3}}, progress=False)
    with pytest.raises(UsageError, match="no run to resume"):
        matcard.train(out=str(tmp_path / "y"), resume=True, progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        # batch-level cardinality loss + class-balanced sampling + the second crystal GNN
        {
            "loss": "magnitude",
            "sampler.name": "class_balanced",
            "model": "schnet",
            "model.params": {"hidden": 32, "n_filters": 32},
        },
        # deferred re-weighting schedule (on_epoch_start) on composition descriptors + SMOTE
        {"loss": "ldam", "loss.params": {"drw_start": 0.5}, "model": "mlp", "sampler.name": "smote"},
    ],
    ids=["magnitude-schnet-balanced", "ldam-drw-mlp-smote"],
)
def test_losses_samplers_and_models_train_end_to_end(env, tmp_path, overrides):
    result = matcard.train(out=str(tmp_path / "r"), progress=False, **{**FAST, "epochs": 2, **overrides})
    assert result.metrics["test"]["n_samples"] > 0
    assert np.isfinite([float(r["train_loss"]) for r in _history(result.run_dir)]).all()
    frame = result.model.predict(matcard.load_dataset("aflow-prototypes", progress=False).records()[:3])
    assert frame["error"].isna().all()


def test_evaluate_on_another_dataset_matches_classes_by_name(run, shared_data):
    # 70 JARVIS POSCARs: crystal systems computed with spglib by the bundle's own task recipe
    result = evaluate(run.run_dir / "model", dataset=str(shared_data / "alignn_sample_poscar"), split="all",
                      progress=False)  # fmt: skip
    assert result["split"] == "all" and result["metrics"]["n_samples"] == 70
    assert set(result["metrics"]["per_class"]) == set(run.model.class_names)
    with pytest.raises(UsageError, match="split all"):
        evaluate(run.run_dir, dataset=str(shared_data / "alignn_sample_poscar"), progress=False)


def test_per_item_predictions_reproduce_the_recorded_metrics(run):
    from matcard.benchmark import prediction_arrays
    from matcard.metrics import classification_metrics
    from matcard.training import read_predictions

    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    split = json.loads((run.run_dir / "splits" / "split.json").read_text())
    for name in ("val", "test"):
        frame = read_predictions(run.run_dir, name)
        assert len(frame) == metrics[name]["n_samples"]
        y, proba, class_names = prediction_arrays(frame)
        assert class_names == metrics["meta"]["class_names"]
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
        assert (frame["predicted"] == [class_names[k] for k in proba.argmax(axis=1)]).all()
        assert classification_metrics(y, proba, class_names) == metrics[name]
        assert frame["id"].tolist() == split["ids"][name]  # the saved split's items, in its order


def test_a_run_that_failed_before_training_does_not_block_its_directory(env, tmp_path):
    out = tmp_path / "typo"
    with pytest.raises(UsageError, match="no-such-dataset"):
        matcard.train(out=str(out), dataset="no-such-dataset", progress=False, **FAST)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "no-such-dataset" in info["reason"] and info["resumable"] is False
    # the corrected command, into the same directory, with --resume (or without: see resolve_run)
    assert resolve_run(out=str(out))[2] is False
    corrected = {**FAST, "epochs": 1, "dataset": "aflow-prototypes"}
    fixed = matcard.train(out=str(out), resume=True, progress=False, **corrected)
    assert not fixed.resumed and fixed.metrics["test"]["n_samples"] > 0
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["dataset"] == "aflow-prototypes"


def test_a_failure_during_training_marks_the_run_failed_with_its_reason(env, tmp_path):
    out = tmp_path / "r"
    (out / "history.csv").mkdir(parents=True)  # the first epoch's history write fails: a real OSError
    with pytest.raises(OSError):
        matcard.train(out=str(out), progress=False, **{**FAST, "epochs": 2})
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "history.csv" in info["reason"]
    assert info["error_type"] in ("IsADirectoryError", "OSError", "PermissionError")


def test_overwrite_removes_only_what_a_run_writes(tmp_path):
    for name in ("config.yaml", "run.json", "metrics.json", "checkpoints/last.ckpt", "model/weights.pt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="--overwrite"):
        resolve_run(out=str(tmp_path))
    assert resolve_run(out=str(tmp_path), overwrite=True)[1] == tmp_path
    clear_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
