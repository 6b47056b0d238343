"""Count-matched control entries and collapsed rows in a real (tiny) train study.

The entry under test is a reweighting loss defined here that reports its realised class weights,
as the reweighting cardinality losses do; the control cells' plumbing (their resolved settings carry
those weights, their key follows them) is checked without training them, and a second study trains
the control through a weighted-CE subclass defined here that takes explicit ``weights``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from cli import app
from matcard import benchmark
from matcard.errors import ConfigError
from matcard.losses import LOSSES
from matcard.losses.base import ImbalanceLoss
from matcard.losses.reweighting import WeightedCrossEntropyLoss

TRAIN = {
    # all 288 AFLOW prototypes, binary "is cubic"; a tiny CGCNN, 2 epochs
    "data": {"dataset": "aflow-prototypes", "task": "spacegroup.number>=195"},
    "model": {"name": "cgcnn", "params": {"n_conv": 1, "hidden": 32}},
    "trainer": {"epochs": 2, "patience": None},
}


class _Reweighted(ImbalanceLoss):
    """CE with per-class weights sqrt(N / (C n_c)), reported as its realised class weights."""

    def compute(self, logits, target, embeddings):
        weights = self._weights().to(logits.dtype)
        return (weights[target] * F.cross_entropy(logits, target, reduction="none")).mean()

    def _weights(self) -> torch.Tensor:
        counts = self.class_counts.clamp_min(1.0)
        return (counts.sum() / (self.n_classes * counts)).sqrt()

    def realised_class_weights(self) -> list[float]:
        return self._weights().tolist()


class _ExplicitWeightedCE(WeightedCrossEntropyLoss):
    """weighted_ce with explicit ``weights=[w0, w1, ...]``."""

    def __init__(self, class_counts, scheme="inverse", beta=0.9999, weights=None) -> None:
        super().__init__(class_counts, scheme, beta)
        if weights is not None:
            self.class_weight = torch.tensor(weights, dtype=torch.float32)


def study(**changes):
    tree = {
        "name": "controls",
        "train": TRAIN,
        "seeds": [0],
        "losses": [
            "ce",
            {"label": "magnitude_reference", "loss": "magnitude", "params": {"mode": "replace"}},
            {"label": "reweighted", "loss": "test_reweighted"},
            {"label": "reweighted_control", "control_for": "reweighted"},
        ],
        "workers": 1,  # in this process: the test's losses are registered here
        "bootstrap": {"samples": 200},
    }
    tree.update(changes)
    return benchmark.load_benchmark_config(overrides=tree)


@pytest.fixture(autouse=True)
def _test_losses(monkeypatch):
    monkeypatch.setitem(LOSSES, "test_reweighted", _Reweighted)


def test_a_control_trains_weighted_ce_and_waits_for_its_entry():
    control = next(e for e in study().losses if e.label == "reweighted_control")
    assert (control.loss, control.params) == ("weighted_ce", {})
    cell = next(c for c in benchmark.plan_cells(study(), Path("x")) if c.label == "reweighted_control")
    assert cell.waits_for == "reweighted" and cell.key == "pending"
    assert benchmark.read_cell(cell) is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"label": "c", "control_for": "nothing"}, r"losses\[c\]\.control_for: 'nothing' is not the label"),
        ({"label": "c", "control_for": "reweighted_control"}, r"losses\[c\]\.control_for: .* a control"),
        ({"label": "c", "control_for": "reweighted", "loss": "focal"}, r"losses\[c\]\.loss: a control entry"),
        ({"label": "c", "control_for": "reweighted", "params": {"scheme": "median"}}, r"losses\[c\]\.params"),
        ({"label": "c", "control_for": "ce"}, r"losses\[c\]\.control_for: the loss of 'ce'"),
    ],
)
def test_bad_control_entries_fail_naming_the_entry(entry, message):
    with pytest.raises(ConfigError, match=message):
        study(losses=[*study().model_dump(mode="json")["losses"], entry])


def test_controls_need_a_train_study():
    with pytest.raises(ConfigError, match=r"losses\[c\]\.control_for: .* train study"):
        benchmark.load_benchmark_config(
            overrides={
                "name": "s",
                "kind": "synthetic",
                "losses": ["ce", {"label": "c", "control_for": "ce"}],
            }
        )


def test_cli_exits_2_naming_the_control_entry(tmp_path):
    tree = study().model_dump(mode="json")
    tree["losses"].append({"label": "orphan_control", "control_for": "missing"})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tree))
    result = CliRunner().invoke(app, ["benchmark", "--config", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "losses[orphan_control].control_for: 'missing'" in " ".join(result.output.split())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, session_data_dir, file_mirror):
    """The study without its control: ce, the collapsing reference magnitude loss, the reweighted loss."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MATCARD_DATA_DIR", str(session_data_dir))
        patch.setenv("MATCARD_MIRROR", file_mirror)
        patch.setitem(LOSSES, "test_reweighted", _Reweighted)
        out = tmp_path_factory.mktemp("bench") / "controls"
        selected = benchmark.select_losses(study(), ["magnitude_reference", "reweighted"])
        yield benchmark.run_benchmark(selected, out), out


def test_a_control_cell_carries_the_realised_weights_of_its_entry(trained):
    _, out = trained
    cells = {c.label: c for c in benchmark.plan_cells(study(), out)}
    target = json.loads((cells["reweighted"].directory / "metrics.json").read_text())
    weights = target["loss"]["realised_class_weights"]
    counts = target["meta"]["train_class_counts"]
    assert weights == pytest.approx(_Reweighted(counts).realised_class_weights())
    control = cells["reweighted_control"]
    assert control.waits_for is None and control.key != "pending"
    assert control.settings["loss"] == {"name": "weighted_ce", "params": {"weights": weights}}
    assert control.directory.name == f"seed0-{control.key}"
    # the key follows the weights: other weights, another cell
    record = json.loads((cells["reweighted"].directory / "cell.json").read_text())
    assert record["loss"]["realised_class_weights"] == weights
    assert benchmark.planning._key("train", {**control.settings, "out": None}) == control.key
    other = {**control.settings, "loss": {"name": "weighted_ce", "params": {"weights": [1.0, 1.0]}}}
    assert benchmark.planning._key("train", other) != control.key


def test_collapsed_rows_are_counted_and_marked(trained):
    result, out = trained
    rows = {row["loss"]: row for row in result.summary}
    assert rows["magnitude_reference"]["collapsed"] == 1
    table = (out / "table.md").read_text()
    line = next(t for t in table.splitlines() if t.startswith("| `magnitude_reference`"))
    assert " †" in line.split("|")[2]  # on its macro-F1
    assert "† collapsed to a constant predictor" in table and "`magnitude_reference` 1 of 1" in table
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert {row["loss"]: row["collapsed"] for row in summary}["magnitude_reference"] == 1
    per_seed = json.loads((out / "results.json").read_text())["per_seed"]
    assert all("pr_auc_minority" in row and "collapsed" in row for row in per_seed)
    assert "Δ minority PR-AUC vs ce [CI]" in table


def test_a_cell_recorded_before_the_guard_gets_its_verdict_from_its_predictions(trained):
    result, out = trained
    cells = benchmark.plan_cells(result.config, out)
    records = {(c.label, c.seed): benchmark.read_cell(c) for c in cells}
    for record in records.values():  # as cell.json was written before the collapse guard
        record.pop("collapsed")
        record.pop("collapse")
    rows = {row["loss"]: row for row in benchmark.summarise(result.config, cells, records, out).summary}
    assert rows["magnitude_reference"]["collapsed"] == 1


def test_a_trained_control_is_compared_with_its_entry(trained, monkeypatch, session_data_dir, file_mirror):
    _, out = trained
    monkeypatch.setenv("MATCARD_DATA_DIR", str(session_data_dir))
    monkeypatch.setenv("MATCARD_MIRROR", file_mirror)
    monkeypatch.setitem(LOSSES, "weighted_ce", _ExplicitWeightedCE)
    full = benchmark.run_benchmark(study(), out)
    assert full.trained_cells == 1 and full.reused_cells == 3  # only the control is new
    rows = {row["loss"]: row for row in full.summary}
    assert rows["reweighted"]["control"] == "reweighted_control"
    for metric in ("macro_f1", "minority_recall", "pr_auc_minority"):
        low, high = rows["reweighted"][f"{metric}_vs_control_ci"]
        assert low <= high and rows["reweighted"][f"{metric}_vs_control"] is not None
        assert rows["ce"][f"{metric}_vs_control"] is None
    table = (out / "table.md").read_text()
    assert "Δ macro-F1 vs control [CI]" in table
    summary_csv = (out / "summary.csv").read_text().splitlines()[0]
    assert "macro_f1_vs_control_low" in summary_csv and "collapsed" in summary_csv


def test_the_decisions_table_shows_argmax_tuned_and_per_class_coverage(trained):
    result, out = trained
    cells = {c.label: c for c in benchmark.plan_cells(result.config, out)}
    metrics = json.loads((cells["reweighted"].directory / "metrics.json").read_text())
    conformal = metrics["decision"]["test"]["conformal"]["per_class"]
    per_seed = {row["loss"]: row for row in result.per_seed}
    minority = result.minority_classes[0]
    row = per_seed["reweighted"]
    for name in result.class_names:
        assert row[f"conformal_coverage_{name}"] == pytest.approx(conformal[name]["coverage"])
    assert row["conformal_minority_coverage"] == pytest.approx(conformal[minority]["coverage"])
    summary = {row["loss"]: row for row in result.summary}["reweighted"]
    assert summary[f"conformal_coverage_{minority}"] == pytest.approx(conformal[minority]["coverage"])
    table = (out / "table.md").read_text()
    assert "macro-F1 argmax → tuned" in table and "tuned vs ce tuned [CI]" in table
    line = next(t for t in table.splitlines() if t.startswith("| `reweighted`") and "→" in t)
    tuned = metrics["decision"]["test"]["tuned"]["macro_f1"]
    assert f"{metrics['test']['macro_f1']:.3f} → {tuned:.3f}" in line
    assert f"{minority} {conformal[minority]['coverage']:.2f}" in line
    assert benchmark.decision_rich_table(result).row_count == len(result.summary)
