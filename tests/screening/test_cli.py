"""`matcard screen`: CliRunner for options and output, real subprocesses for kill -9 + --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli import app
from matcard.screening.pipeline import state_dir_for

runner = CliRunner()


def test_screen_command_writes_results_summary_and_json(
    seeded_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "s.csv"
    result = runner.invoke(
        app,
        [
            "screen",
            str(seeded_bundle),
            str(shared_data / "alignn_sample_poscar"),
            "--out",
            str(out),
            "--class",
            "cubic",
            "--top-k",
            "5",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # stdout holds only the JSON document
    assert summary["n_predicted"] == 70 and summary["n_failed"] == 0
    assert sum(summary["class_counts"].values()) == 70
    assert summary["structures_per_second"] > 0
    assert len(pd.read_csv(out)) == 70
    shortlist = pd.read_csv(tmp_path / "s.shortlist.csv")
    assert shortlist["rank"].tolist() == [1, 2, 3, 4, 5]
    assert shortlist["prob_cubic"].is_monotonic_decreasing
    assert "screening summary" in result.stderr


def test_screen_a_registry_dataset_by_name(seeded_bundle: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["screen", str(seeded_bundle), "aflow-prototypes", "--out", str(tmp_path / "a.parquet")]
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(tmp_path / "a.parquet")
    assert len(frame) == 288 and frame["id"].is_unique


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "s.txt"], "--out"),
        (["--out", "s.csv", "--class", "no-such-class"], "--class"),
        (["--out", "s.csv", "--min-prob", "0.5"], "--class"),
        (["--out", "s.csv", "--workers", "0"], "--workers"),
    ],
)
def test_bad_usage_exits_2(
    seeded_bundle: Path, shared_data: Path, tmp_path: Path, args: list, message: str
) -> None:
    args = [a if not a.startswith("s.") else str(tmp_path / a) for a in args]
    result = runner.invoke(
        app, ["screen", str(seeded_bundle), str(shared_data / "alignn_sample_poscar"), *args]
    )
    assert result.exit_code == 2
    assert message in result.stderr


def test_missing_model_or_input_exit_2(seeded_bundle: Path, tmp_path: Path) -> None:
    missing_model = runner.invoke(
        app, ["screen", str(tmp_path / "nope"), "aflow-prototypes", "--out", "x.csv"]
    )
    assert missing_model.exit_code == 2 and "no model" in missing_model.stderr
    missing_input = runner.invoke(
        app, ["screen", str(seeded_bundle), str(tmp_path / "none.cif"), "--out", str(tmp_path / "x.csv")]
    )
    assert missing_input.exit_code == 2


def _matcard() -> list[str]:
    executable = Path(sys.executable).parent / "matcard"
    return [str(executable)] if executable.exists() else [sys.executable, "-m", "cli"]


def _committed_shards(manifest: Path) -> int:
    try:
        return len(json.loads(manifest.read_text())["shards"])
    except (json.JSONDecodeError, OSError, KeyError):
        return 0


def _kill_after_shards(command: list[str], manifest: Path, shards: int, log: Path) -> int:
    """Run ``command`` and SIGKILL its whole process group once ``shards`` shards are committed."""
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    deadline = time.monotonic() + 240
    committed = 0
    try:
        while time.monotonic() < deadline and process.poll() is None:
            committed = _committed_shards(manifest)
            if committed >= shards:
                break
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the screen and its reader processes, no cleanup
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, f"exit {process.returncode}, not killed: {log.read_text()}"
    return committed


@pytest.mark.slow
def test_kill_9_midway_then_resume_gives_one_row_per_structure(
    seeded_bundle: Path, mp20_subset: Path, tmp_path: Path
) -> None:
    """A real `matcard screen` process is SIGKILLed after some shards committed, its resume is killed
    again a few shards later, and a last --resume finishes: one row per input, as uninterrupted."""
    from matcard.screening import screen

    reference = tmp_path / "reference.parquet"
    screen(seeded_bundle, mp20_subset, reference, batch_size=8, progress=False)  # uninterrupted

    out = tmp_path / "s.parquet"
    command = [*_matcard(), "screen", str(seeded_bundle), str(mp20_subset), "--out", str(out)]
    command += ["--batch-size", "8"]
    manifest = state_dir_for(out) / "manifest.json"
    first = _kill_after_shards(command, manifest, 3, tmp_path / "killed-run.stderr")
    assert first >= 3 and not out.exists()
    second_log = tmp_path / "killed-resume.stderr"
    second = _kill_after_shards([*command, "--resume"], manifest, first + 3, second_log)
    assert second >= first + 3 and not out.exists()

    resumed = subprocess.run([*command, "--resume", "--json"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["n_resumed"] > 0 and summary["n_resumed"] + summary["n_processed"] == 400
    frame, expected = pd.read_parquet(out), pd.read_parquet(reference)
    assert len(frame) == 400 and frame["id"].is_unique
    assert sorted(frame["id"]) == sorted(pd.read_csv(mp20_subset)["material_id"])
    frame = frame.set_index("id").loc[expected["id"]]
    assert frame["predicted_class"].tolist() == expected["predicted_class"].tolist()
    probs = [c for c in expected.columns if c.startswith("prob_")]
    np.testing.assert_allclose(frame[probs].to_numpy(), expected[probs].to_numpy(), atol=1e-6)


def test_trained_model_screens_the_poscar_folder_like_predict(
    trained_run: Path, shared_data: Path, tmp_path: Path
) -> None:
    """Acceptance: `matcard screen RUN/model alignn_sample_poscar --out s.csv` -> 70 rows, and the
    rows agree with TrainedModel.predict on the same structures (a real subprocess, a real model)."""
    from matcard.bundle import load_model
    from matcard.structures import read_structures

    folder = shared_data / "alignn_sample_poscar"
    out = tmp_path / "s.csv"
    done = subprocess.run(
        [*_matcard(), "screen", str(trained_run / "model"), str(folder), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "screening summary" in done.stdout and "screening summary" not in done.stderr  # a result
    frame = pd.read_csv(out, keep_default_na=False)
    assert len(frame) == 70 and frame["id"].is_unique
    model = load_model(trained_run)  # a run directory works as well as RUN/model
    expected = model.predict(read_structures(folder).records).set_index("id").loc[frame["id"]]
    assert frame["predicted_class"].tolist() == expected["predicted_class"].tolist()
    probs = [f"prob_{c}" for c in model.class_names]
    np.testing.assert_allclose(frame[probs].to_numpy(), expected[probs].to_numpy(), atol=1e-5)

    in_memory = model.screen(folder)  # the API: a DataFrame when no output file is given
    assert in_memory["id"].tolist() == frame["id"].tolist()
    assert in_memory["predicted_class"].tolist() == frame["predicted_class"].tolist()


def test_screen_that_predicts_nothing_exits_1_and_says_why(seeded_bundle: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = runner.invoke(app, ["screen", str(seeded_bundle), str(empty), "--out", str(tmp_path / "e.csv")])
    assert nothing.exit_code == 1, nothing.output
    assert "nothing was predicted" in nothing.stderr and "no structures" in nothing.stderr


def test_json_keeps_full_failure_reasons(seeded_bundle: Path, tmp_path: Path) -> None:
    """An unreadable table fails every input: exit 1, and the reason is not cut at its first colon."""
    table = tmp_path / "no_cif.csv"
    table.write_text("a,b\n1,2\n")
    out = tmp_path / "t.csv"
    result = runner.invoke(app, ["screen", str(seeded_bundle), str(table), "--out", str(out), "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["n_predicted"] == 0 and summary["n_failed"] == 1
    reason = (
        "no CIF column in table: no column named like cif / structure / poscar, and none holds CIF text "
        "or pymatgen Structure dicts in its first rows; columns seen: a, b"
    )  # the whole reason, past every colon
    assert summary["failure_reasons"] == {reason: 1}
    assert reason in " ".join(result.stderr.split())
    errors = pd.read_csv(tmp_path / "t.errors.csv", keep_default_na=False)
    assert list(errors.columns) == ["source", "reason", "detail"]
