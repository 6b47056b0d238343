from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli import app
from matcard.featurize import FeatureStore

runner = CliRunner()


def test_featurize_folder_with_task_json(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "cgcnn_sample_classification"
    out = tmp_path / "graphs"
    result = runner.invoke(
        app, ["featurize", str(folder), "--task", "label", "--out", str(out), "--jobs", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    assert summary["count"] + summary["failures"] == summary["inputs"] == 10
    assert summary["mean_edges"] <= 12 * summary["mean_nodes"] and summary["mean_nodes"] > 0
    assert sum(summary["class_counts"].values()) == summary["count"]
    labels = pd.read_parquet(out / "labels-label.parquet")
    assert len(labels) == 10 and set(labels.columns) == {"id", "position", "y", "class"}
    store = FeatureStore.read(out)
    assert len(store) == summary["count"] and store.complete

    again = runner.invoke(app, ["featurize", str(folder), "--task", "label", "--out", str(out), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["from_cache"] is True


def test_featurize_composition_of_a_registry_dataset_prints_a_summary(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["featurize", "matbench-expt-is-metal", "--featurizer", "composition",
         "--descriptors", "stoichiometry,valence_orbital", "--out", str(tmp_path / "c"), "--jobs", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for word in ("items", "failures", "features", "seconds", "per second"):
        assert word in result.output
    store = FeatureStore.read(tmp_path / "c")
    assert store.kind == "composition" and len(store) + len(store.failures) == store.n_inputs == 4921
    matrix, _ = store.matrix()
    assert matrix.shape[1] == 6 + 8  # Stoichiometry + ValenceOrbital widths


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--featurizer", "voxel"], "--featurizer"),
        (["--cutoff", "-2"], "featurizer.cutoff"),
        (["--mode", "knn"], "featurizer.mode"),
        (["--featurizer", "composition", "--cutoff", "5"], "--cutoff"),
        (["--featurizer", "composition", "--descriptors", "magpie,bogus"], "featurizer.descriptors"),
    ],
)
def test_bad_options_exit_2_naming_the_option(shared_data: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["featurize", str(shared_data / "cgcnn_sample_classification"), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_unknown_dataset_exits_2() -> None:
    result = runner.invoke(app, ["featurize", "no-such-dataset"])
    assert result.exit_code == 2


def test_composition_dataset_with_graph_featurizer_is_a_usage_error() -> None:
    result = runner.invoke(app, ["featurize", "matbench-expt-is-metal"])
    assert result.exit_code == 2 and "composition" in result.output


@pytest.mark.slow
def test_real_subprocess_json_on_stdout(shared_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "120"}
    proc = subprocess.run(
        [sys.executable, "-c", "from cli import main; main()", "featurize",
         str(shared_data / "alignn_sample_poscar"), "--out", str(tmp_path / "p"), "--json"],
        capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[2], timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["count"] == 70 and summary["failures"] == 0
