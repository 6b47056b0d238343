"""`matcard benchmark`: studies of every loss over seeds, with paired bootstrap CIs against CE.

Real runs throughout: the reference synthetic experiment (small) and CGCNN on the embedded AFLOW
prototypes; a real `matcard benchmark` process is killed with SIGKILL and resumed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import f1_score, recall_score
from typer.testing import CliRunner

from cli import app
from matcard import benchmark
from matcard.errors import ConfigError, MatcardError, UsageError
from matcard.metrics import classification_metrics

REPO = Path(__file__).resolve().parent.parent
MATCARD = str(Path(sys.executable).parent / "matcard")
# the reference experiment, shrunk: 2,000 samples, 4 epochs
TINY_SYNTHETIC = {"n_samples": 2000, "epochs": 4}


def synthetic_study(**changes):
    tree = {
        "name": "tiny",
        "kind": "synthetic",
        "synthetic": dict(TINY_SYNTHETIC),
        "seeds": [2048, 2049],
        "minority": "non_majority",
        "losses": [
            "ce",
            "magnitude",
            {"label": "ce_adam", "loss": "ce", "set": {"optimizer": "adam", "lr": 0.001, "epochs": 6}},
        ],
        "workers": 1,
        "bootstrap": {"samples": 300},
    }
    tree.update(changes)
    return benchmark.load_benchmark_config(overrides=tree)


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny"
    return benchmark.run_benchmark(synthetic_study(), out), out


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------


def test_confusion_scores_match_sklearn():
    rng = np.random.default_rng(0)
    minority = np.array([3, 4])
    for _ in range(20):
        y = rng.integers(0, 5, 200)
        predicted = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, 200))  # class 4 never predicted
        macro_f1, recall = benchmark._scores(benchmark._confusion(y, predicted, 5), minority)
        present_or_predicted = sorted(set(y) | set(predicted))
        assert macro_f1 == pytest.approx(
            f1_score(y, predicted, labels=present_or_predicted, average="macro", zero_division=0)
        )
        assert recall == pytest.approx(recall_score(y, predicted, labels=[3, 4], average="macro"))


def test_bootstrap_of_identical_predictions_is_exactly_zero():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    predicted = rng.integers(0, 3, 300)
    intervals = benchmark.paired_bootstrap(
        [(y, predicted, predicted)] * 3, 3, np.array([2]), samples=200, confidence=0.95, seed=0
    )
    assert intervals == {"macro_f1": (0.0, 0.0), "minority_recall": (0.0, 0.0)}


def test_bootstrap_interval_brackets_a_known_difference():
    # the method finds every minority item, the baseline none: recall difference exactly 1 on every
    # resample; macro-F1 is higher on every resample too
    y = np.array([0] * 90 + [1] * 10)
    method = y.copy()
    baseline = np.zeros_like(y)
    intervals = benchmark.paired_bootstrap(
        [(y, method, baseline), (y, method, baseline)], 2, np.array([1]), samples=300, confidence=0.9, seed=3
    )
    assert intervals["minority_recall"] == (1.0, 1.0)
    low, high = intervals["macro_f1"]
    # both classes count (present or predicted): the baseline scores F1 0 on the minority class
    point = 1.0 - f1_score(y, baseline, average="macro", labels=[0, 1], zero_division=0)
    assert 0 < low <= point <= high <= 1.0


def test_bootstrap_reflects_seed_to_seed_variation():
    # two seeds disagree in sign: the interval must straddle zero, not collapse onto the mean
    y = np.array([0] * 50 + [1] * 50)
    better = y.copy()
    worse = 1 - y
    intervals = benchmark.paired_bootstrap(
        [(y, better, worse), (y, worse, better)], 2, np.array([1]), samples=400, confidence=0.95, seed=0
    )
    low, high = intervals["macro_f1"]
    assert low < 0 < high


def test_minority_choice():
    study = synthetic_study()
    names = ["a", "b", "c"]
    counts = np.array([50, 5, 20])
    assert benchmark.choose_minority(study.model_copy(update={"minority": "rarest"}), names, counts) == ["b"]
    assert benchmark.choose_minority(study, names, counts) == ["b", "c"]  # non_majority
    assert benchmark.choose_minority(study.model_copy(update={"minority": ["c"]}), names, counts) == ["c"]
    with pytest.raises(ConfigError, match="unknown classes"):
        benchmark.choose_minority(study.model_copy(update={"minority": ["z"]}), names, counts)


# ---------------------------------------------------------------------------------------------
# options and configs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "first", "seeds"),
    [("3", 0, [0, 1, 2]), ("2", 2048, [2048, 2049]), ("0,5", 0, [0, 5]), ("4-6", 0, [4, 5, 6])],
)
def test_seed_option(text, first, seeds):
    assert benchmark.parse_seed_option(text, first) == seeds


def test_loss_list_option():
    entries = benchmark.parse_loss_list("ce, focal ,magnitude:mode=add:t=0.5")
    assert [e["label"] for e in entries] == ["ce", "focal", "magnitude-mode-add-t-0.5"]
    assert entries[2] == {
        "label": "magnitude-mode-add-t-0.5",
        "loss": "magnitude",
        "params": {"mode": "add", "t": 0.5},
    }
    with pytest.raises(ConfigError, match="key=value"):
        benchmark.parse_loss_list("magnitude:add")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sedes": [0]}, "sedes: unknown key"),
        ({"baseline": "nothing"}, "baseline"),
        ({"losses": ["ce", "ce"]}, "labels must be unique"),
        ({"losses": ["ce", "no_such_loss"]}, r"losses\[no_such_loss\]"),
        ({"losses": ["ce", {"label": "x", "loss": "ce", "set": {"momentum": 1}}]}, r"losses\[x\]\.set"),
        ({"losses": ["ce", {"label": "f", "loss": "focal", "params": {"gama": 2}}]}, r"losses\[f\]"),
        ({"seeds": [1, 1]}, "distinct"),
        ({"synthetic": {"majority": 2.0}}, "majority"),
    ],
)
def test_bad_synthetic_studies_fail_naming_the_field(changes, message):
    with pytest.raises((ConfigError, UsageError), match=message):
        synthetic_study(**changes)


def test_train_entries_are_checked_against_the_training_config():
    base = {"name": "t", "train": {"data": {"dataset": "aflow-prototypes"}}, "seeds": [0]}
    with pytest.raises(ConfigError, match=r"losses\[x\].*optim\.lrr: unknown key"):
        benchmark.load_benchmark_config(
            overrides={**base, "losses": ["ce", {"label": "x", "loss": "ce", "set": {"optim.lrr": 1}}]}
        )
    with pytest.raises(ConfigError, match=r"losses\[x\]\.set\.data\.limit: .*same split"):
        benchmark.load_benchmark_config(
            overrides={**base, "losses": ["ce", {"label": "x", "loss": "ce", "set": {"data.limit": 50}}]}
        )
    with pytest.raises(ConfigError, match=r"trainer\.epochz: unknown key"):
        benchmark.load_benchmark_config(
            overrides={**base, "train": {"trainer": {"epochz": 3}}, "losses": ["ce"]}
        )


def test_an_entry_changes_only_its_own_cells():
    study = benchmark.load_benchmark_config(
        overrides={
            "name": "t",
            "train": {"data": {"dataset": "aflow-prototypes"}, "trainer": {"epochs": 3}},
            "seeds": [0, 1],
            "losses": ["ce", {"label": "long", "loss": "ce", "set": {"trainer.epochs": 9}}, "focal"],
        }
    )
    epochs = {
        (c.label, c.seed): c.settings["trainer"]["epochs"] for c in benchmark.plan_cells(study, Path("x"))
    }
    assert epochs == {
        ("ce", 0): 3,
        ("ce", 1): 3,
        ("long", 0): 9,
        ("long", 1): 9,
        ("focal", 0): 3,
        ("focal", 1): 3,
    }
    assert study.train == {"data": {"dataset": "aflow-prototypes"}, "trainer": {"epochs": 3}}


# every loss the issue asks each study to compare (labels of configs/benchmarks/*.yaml)
REQUIRED_LABELS = {
    "ce", "weighted_ce", "focal", "class_balanced", "ldam_drw", "logit_adjusted", "balanced_softmax",
    "seesaw", "equalization", "inverse_view", "ot_reweight", "magnitude_reference",
    "magnitude_reference_multiply", "magnitude_reference_add", "spread_reference", "ce_tuned",
}  # fmt: skip


@pytest.mark.parametrize("name", ["synthetic", "glass_tg", "mp20_crystal_system", "perov5_gapped"])
def test_shipped_studies_are_valid_and_complete(name):
    study = benchmark.load_benchmark_config(REPO / "configs" / "benchmarks" / f"{name}.yaml")
    assert study.name == name
    assert len(study.seeds) >= 3
    labels = {entry.label for entry in study.losses}
    assert labels >= REQUIRED_LABELS, REQUIRED_LABELS - labels
    modes = {entry.params.get("mode", "replace") for entry in study.losses if entry.loss == "magnitude"}
    assert modes >= {"replace", "multiply", "add"}
    ldam = next(entry for entry in study.losses if entry.loss == "ldam")
    assert ldam.params.get("drw", True)  # LDAM with deferred re-weighting
    assert benchmark.plan_cells(study, Path("x"))  # every cell's settings resolve


# ---------------------------------------------------------------------------------------------
# running studies
# ---------------------------------------------------------------------------------------------


def test_synthetic_study_outputs(synthetic_run):
    result, out = synthetic_run
    for name in ("summary.csv", "per_seed.csv", "results.json", "table.md", "study.yaml"):
        assert (out / name).is_file(), name
    for plot in ("metrics.png", "per_class_recall.png", "paired_vs_baseline.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [row["loss"] for row in result.summary] == ["ce", "magnitude", "ce_adam"]
    assert result.minority_classes == [f"class_{c}" for c in range(1, 10)]
    per_seed = pd.read_csv(out / "per_seed.csv")
    assert len(per_seed) == 6 and set(per_seed["seed"]) == {2048, 2049}

    table = (out / "table.md").read_text()
    assert "| `ce` |" in table and "(baseline)" in table and "seeds: 2048, 2049" in table
    assert "hardware:" in table and "split:" in table and "dataset: synthetic" in table

    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"][0]["macro_f1_vs_baseline"] == 0.0
    for row in result.summary:
        assert row["n_seeds"] == 2
        values = per_seed[per_seed["loss"] == row["loss"]]["macro_f1"]
        assert row["macro_f1"] == pytest.approx(values.mean())
        assert row["macro_f1_std"] == pytest.approx(values.std(ddof=1))
        low, high = row["macro_f1_vs_baseline_ci"]
        assert low <= high


def test_cell_metrics_come_from_its_test_predictions(synthetic_run):
    result, out = synthetic_run
    cells = benchmark.plan_cells(result.config, out)
    for cell in cells:
        record = benchmark.read_cell(cell)
        frame = pd.read_parquet(cell.directory / "predictions.parquet")
        y, proba, names = benchmark.prediction_arrays(frame)
        assert record["test"] == classification_metrics(y, proba, names)
        assert record["n_test"] == 600  # 30 % of 2,000
        history = pd.read_csv(cell.directory / "history.csv")
        # the reported epoch is the best validation epoch, never chosen on test
        assert record["selected_epoch"] == int(history["epoch"][history["val_macro_f1"].idxmax()])
    adam = next(c for c in cells if c.label == "ce_adam")
    assert benchmark.read_cell(adam)["epochs_run"] == 6


def test_rerun_skips_every_finished_cell_and_a_changed_setting_makes_new_cells(synthetic_run):
    result, out = synthetic_run
    cells = benchmark.plan_cells(result.config, out)
    stamps = {cell.directory: (cell.directory / "cell.json").stat().st_mtime_ns for cell in cells}
    again = benchmark.run_benchmark(result.config, out)
    assert (again.reused_cells, again.trained_cells) == (6, 0)
    assert {c.directory: (c.directory / "cell.json").stat().st_mtime_ns for c in cells} == stamps
    assert again.summary == result.summary

    # one more epoch for the baseline: only its two cells are new, the others are reused
    changed = result.config.model_copy(update={"synthetic": {**TINY_SYNTHETIC, "epochs": 5}})
    changed = benchmark.load_benchmark_config(overrides=changed.model_dump(mode="json"))
    longer = benchmark.run_benchmark(changed, out)
    assert longer.trained_cells == 4  # ce and magnitude use the study's epochs; ce_adam sets its own
    assert longer.reused_cells == 2


@pytest.fixture(scope="module")
def train_run(tmp_path_factory, session_data_dir, file_mirror):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MATCARD_DATA_DIR", str(session_data_dir))
        patch.setenv("MATCARD_MIRROR", file_mirror)
        study = benchmark.load_benchmark_config(
            overrides={
                "name": "aflow",
                "train": {
                    "data": {"dataset": "aflow-prototypes", "limit": 150},
                    "trainer": {"epochs": 2, "patience": None},
                },
                "seeds": [0, 1],
                "losses": ["ce", "focal"],
                "workers": 2,  # real spawned worker processes
                "bootstrap": {"samples": 200},
            }
        )
        out = tmp_path_factory.mktemp("bench") / "aflow"
        yield benchmark.run_benchmark(study, out), out


def test_every_loss_of_a_seed_is_tested_on_the_same_split(train_run):
    result, out = train_run
    cells = {(c.label, c.seed): c for c in benchmark.plan_cells(result.config, out)}
    test_ids = {}
    for (label, seed), cell in cells.items():
        assert (cell.directory / "model" / "bundle.json").is_file()  # a complete matcard.train run
        frame = pd.read_parquet(cell.directory / "predictions.parquet")
        test_ids[label, seed] = frame[frame["split"] == "test"]["id"].tolist()
        split = json.loads((cell.directory / "splits" / "split.json").read_text())
        assert split["ids"]["test"] == test_ids[label, seed]
    assert test_ids["ce", 0] == test_ids["focal", 0]
    assert test_ids["ce", 1] == test_ids["focal", 1]
    assert test_ids["ce", 0] != test_ids["ce", 1]  # each seed draws its own split
    assert result.data["dataset"] == "aflow-prototypes" and result.data["task"] == "crystal_system"
    assert result.minority_classes == ["triclinic"]


def test_a_cell_tested_on_other_items_is_refused(train_run):
    result, out = train_run
    cells = benchmark.plan_cells(result.config, out)
    records = {(c.label, c.seed): benchmark.read_cell(c) for c in cells}
    records["focal", 1] = {**records["focal", 1], "test_ids_sha256": "0" * 64}
    with pytest.raises(MatcardError, match="same for every loss"):
        benchmark.summarise(result.config, cells, records, out)


def test_cli_adhoc_study_json_and_exit_codes(tmp_path, session_data_dir, file_mirror):
    runner = CliRunner()
    out = tmp_path / "adhoc"
    args = ["benchmark", "--dataset", "aflow-prototypes", "--losses", "focal", "--seeds", "1"]
    args += ["--epochs", "1", "--limit", "120", "--workers", "1", "--out", str(out), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["loss"] for row in rows] == ["ce", "focal"]  # ce added as the baseline
    assert rows[1]["macro_f1_vs_baseline_ci"][0] <= rows[1]["macro_f1_vs_baseline_ci"][1]
    assert "cells trained" in result.stderr

    bad = runner.invoke(app, ["benchmark", "--dataset", "aflow-prototypes", "--set", "optim.lrr=1"])
    assert bad.exit_code == 2 and "optim.lrr" in bad.output
    assert runner.invoke(app, ["benchmark"]).exit_code == 2
    study = REPO / "configs" / "benchmarks" / "synthetic.yaml"
    unknown = runner.invoke(app, ["benchmark", "--config", str(study), "--losses", "nope"])
    assert unknown.exit_code == 2 and "nope" in unknown.output
    assert runner.invoke(app, ["benchmark", "--config", str(study), "--model", "mlp"]).exit_code == 2


@pytest.mark.slow
def test_killed_benchmark_resumes_and_keeps_finished_cells(tmp_path):
    study = {
        "name": "kill",
        "kind": "synthetic",
        "synthetic": {"n_samples": 3000, "epochs": 25},
        "seeds": [2048, 2049],
        "losses": ["ce", "focal", "magnitude"],
        "workers": 1,
        "bootstrap": {"samples": 200},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    out = tmp_path / "out"
    command = [MATCARD, "benchmark", "--config", str(path), "--out", str(out)]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("cells/*/*/cell.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(list(out.glob("cells/*/*/cell.json")))
    assert 1 <= finished < 6, process.stderr.read().decode()

    rerun = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{finished} of 6 cells already finished: reused" in rerun.stderr
    assert [row["loss"] for row in json.loads(rerun.stdout)] == ["ce", "focal", "magnitude"]
    assert len(list(out.glob("cells/*/*/cell.json"))) == 6


def test_publish_docs_replaces_only_the_marked_blocks(synthetic_run, tmp_path):
    import importlib.util

    _, out = synthetic_run
    spec = importlib.util.spec_from_file_location("publish_docs", REPO / "benchmarks" / "publish_docs.py")
    publish = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(publish)
    runs = tmp_path / "runs"
    (runs / "tiny").mkdir(parents=True)
    for name in ("table.md", "metrics.png", "paired_vs_baseline.png"):
        (runs / "tiny" / name).write_bytes((out / name).read_bytes())
    docs = tmp_path / "docs"
    docs.mkdir()
    page = "# Page\n\nReading stays.\n\n<!-- study:tiny -->\nold table\n<!-- /study:tiny -->\n\nEnd.\n"
    (docs / "benchmarks.md").write_text(page)
    assert publish.main(["--runs", str(runs), "--docs", str(docs)]) == 0
    text = (docs / "benchmarks.md").read_text()
    assert "old table" not in text and "Reading stays." in text and text.endswith("End.\n")
    assert "| `magnitude` |" in text and "(benchmarks/tiny-metrics.png)" in text
    assert (docs / "benchmarks" / "tiny-metrics.png").read_bytes() == (out / "metrics.png").read_bytes()
    assert publish.main(["--runs", str(runs), "--docs", str(docs)]) == 0
    assert (docs / "benchmarks.md").read_text() == text  # idempotent


def test_another_baseline_reuses_every_cell_and_keeps_the_studys_tables(synthetic_run):
    result, out = synthetic_run
    table = (out / "table.md").read_text()
    other = result.config.model_copy(update={"baseline": "ce_adam"})
    against = benchmark.run_benchmark(other, out, output_suffix="-vs-ce_adam")
    assert against.trained_cells == 0
    assert (out / "table.md").read_text() == table
    text = (out / "table-vs-ce_adam.md").read_text()
    assert "Δ macro-F1 vs ce_adam" in text and "| `ce_adam` |" in text
    rows = {row["loss"]: row for row in against.summary}
    assert rows["ce_adam"]["macro_f1_vs_baseline"] == 0.0
    # the paired difference simply changes sign when the two losses swap roles
    before = {row["loss"]: row for row in result.summary}["ce_adam"]["macro_f1_vs_baseline"]
    assert rows["ce"]["macro_f1_vs_baseline"] == pytest.approx(-before)


def test_every_loss_is_reported_with_argmax_and_tuned_decisions(train_run):
    result, out = train_run
    for row in result.per_seed:
        assert row["tuned_macro_f1"] is not None and row["ece_after"] is not None
        assert 0.0 <= row["conformal_class_coverage"] <= 1.0 and row["conformal_set_size"] >= 1.0
    by_loss = {row["loss"]: row for row in result.summary}
    for row in by_loss.values():
        assert row["tuned_macro_f1"] is not None and row["ece_before"] is not None
        low, high = row["macro_f1_tuned_vs_argmax_ci"]
        assert low <= high  # a real interval: tuned and argmax differ on some items
    assert all(math.isnan(v) for v in by_loss["ce"]["macro_f1_tuned_vs_baseline_tuned_ci"])  # itself
    low, high = by_loss["focal"]["macro_f1_tuned_vs_baseline_tuned_ci"]
    assert low <= high
    ce_seed0 = next(r for r in result.per_seed if r["loss"] == "ce" and r["seed"] == 0)
    cell = next(c for c in benchmark.plan_cells(result.config, out) if (c.label, c.seed) == ("ce", 0))
    recorded = json.loads((cell.directory / "metrics.json").read_text())["decision"]["test"]
    assert ce_seed0["tuned_macro_f1"] == pytest.approx(recorded["tuned"]["macro_f1"])
    assert ce_seed0["ece_after"] == recorded["calibration"]["ece_after"]


MLP_ON_DESCRIPTORS = {"model.name": "mlp", "featurizer.kind": "composition"}


def test_a_study_of_several_representations_warms_each_cache_once_and_runs_the_slowest_first(
    tmp_path, monkeypatch
):
    """Workers only read feature caches: every distinct input of a study (here crystal graphs for
    cgcnn and alignn, composition descriptors for the mlp) is built before they start, once."""
    from matcard.benchmark.run import _cost, _warm_caches

    monkeypatch.setenv("MATCARD_DATA_DIR", str(tmp_path / "data"))  # aflow-prototypes is embedded
    study = benchmark.load_benchmark_config(
        overrides={
            "name": "reps",
            "train": {"data": {"dataset": "aflow-prototypes", "limit": 60}, "trainer": {"epochs": 2}},
            "seeds": [0, 1],
            "losses": [
                "ce",
                {"label": "alignn_ce", "loss": "ce", "set": {"model.name": "alignn"}},
                {"label": "mlp_ce", "loss": "ce", "set": MLP_ON_DESCRIPTORS},
            ],
        }
    )
    cells = benchmark.plan_cells(study, tmp_path / "study")
    assert _warm_caches(cells)  # the class names
    kinds = sorted(path.name.split("-")[2] for path in (tmp_path / "data" / "features").iterdir())
    assert kinds == ["composition", "graph"]  # alignn shares cgcnn's graphs; nothing built twice
    cost = {cell.label: _cost(cell) for cell in cells}
    assert cost["alignn_ce"] > cost["ce"] > cost["mlp_ce"]
