"""`matcard train` / `matcard evaluate`: CliRunner for the shell, real subprocesses where it matters
(a fresh process loading a bundle, two-process DDP on CPU with gloo, a run killed and resumed)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

FAST = ["--set", "data.limit=150", "--set", "trainer.threads=1", "--quiet"]
MATCARD = str(Path(sys.executable).parent / "matcard")


@pytest.fixture(scope="module")
def env(session_data_dir, file_mirror):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MATCARD_DATA_DIR", str(session_data_dir))
        patch.setenv("MATCARD_MIRROR", file_mirror)
        yield


@pytest.fixture(scope="module")
def cli_run(env, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = CliRunner().invoke(app, ["train", "--out", str(run_dir), "--epochs", "3", "--seed", "1", *FAST])
    assert result.exit_code == 0, result.output
    return run_dir, result


def _epochs(run_dir: Path) -> list[int]:
    with open(run_dir / "history.csv", newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def test_train_ends_with_test_metrics_and_per_class_recall(cli_run):
    run_dir, result = cli_run
    assert "test metrics" in result.stdout  # results on stdout; progress and notices on stderr
    assert "test metrics" not in result.stderr
    for text in (
        "test metrics",
        "balanced_accuracy",
        "macro_f1",
        "recall",
        "cubic",
        "triclinic",
        str(run_dir),
    ):
        assert text in result.output
    assert (run_dir / "model" / "bundle.json").is_file()
    assert json.loads((run_dir / "splits" / "split.json").read_text())["meta"]["seed"] == 1


def test_evaluate_json_reproduces_the_run_test_metrics(cli_run):
    run_dir, _ = cli_run
    result = CliRunner().invoke(app, ["evaluate", str(run_dir), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    assert evaluated["split"] == "test"
    assert evaluated["metrics"] == json.loads((run_dir / "metrics.json").read_text())["test"]


def test_bad_usage_exits_2_naming_the_problem(env, tmp_path):
    runner = CliRunner()
    bad_key = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--set", "trainer.epochz=3"])
    assert bad_key.exit_code == 2 and "trainer.epochz" in bad_key.output
    bad_value = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--epochs", "0"])
    assert bad_value.exit_code == 2 and "trainer.epochs" in bad_value.output
    missing = runner.invoke(app, ["evaluate", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    assert not (tmp_path / "r").exists()


def test_bundle_predicts_in_a_fresh_process(cli_run, shared_data):
    run_dir, _ = cli_run
    folder = shared_data / "cgcnn_sample_classification"
    code = (
        "import sys, matcard; m = matcard.load_model(sys.argv[1]); "
        "print(m.predict(sys.argv[2]).to_json(orient='records'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(run_dir / "model"), str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rows = json.loads(out.stdout)
    import matcard

    expected = matcard.load_model(run_dir / "model").predict(folder)
    assert [r["id"] for r in rows] == expected["id"].tolist() and len(rows) == 10
    assert [r["predicted_class"] for r in rows] == expected["predicted_class"].tolist()
    for row, (_, want) in zip(rows, expected.iterrows(), strict=True):
        assert row["prob_cubic"] == pytest.approx(want["prob_cubic"], abs=1e-6)


@pytest.mark.slow
def test_two_process_ddp_on_cpu_yields_a_loadable_bundle(env, tmp_path):
    run_dir = tmp_path / "ddp"
    command = [MATCARD, "train", "--devices", "2", "--accelerator", "cpu", "--epochs", "2"]
    command += ["--out", str(run_dir), *FAST]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test metrics") == 1  # rank 0 alone reports
    import matcard

    model = matcard.load_model(run_dir)
    assert len(model.class_names) == 7
    assert _epochs(run_dir) == [0, 1]
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["n_samples"] > 0


def _rows(run_dir: Path) -> list[dict[str, str]]:
    """history.csv rows without the wall-clock column (the only one allowed to differ)."""
    with open(run_dir / "history.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(handle)]


def _kill_when_recorded(command: list[str], run_dir: Path, rows: int) -> None:
    """Start ``command`` and SIGKILL it as soon as history.csv holds ``rows`` epochs (the next one is
    under way), so the kill lands mid-epoch."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if (run_dir / "history.csv").is_file() and len(_epochs(run_dir)) >= rows:
                break
            assert process.poll() is None, "training ended before it could be killed"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_exactly(env, tmp_path):
    """SIGKILL during an epoch, twice (the second time while resuming), then --resume: the same history,
    best epoch and test metrics as an uninterrupted run with the same seed, losing at most the epoch
    that was running each time."""
    from matcard.checkpoints import load_checkpoint

    epochs = 7
    command = [MATCARD, "train", "--epochs", str(epochs), "--set", "trainer.patience=null", *FAST]
    whole = subprocess.run([*command, "--out", str(tmp_path / "whole")], capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert whole.returncode == 0, whole.stderr[-3000:]

    run_dir = tmp_path / "killed"
    resume = [MATCARD, "train", "--out", str(run_dir), "--resume", "--quiet"]
    for attempt, (start, rows) in enumerate([([*command, "--out", str(run_dir)], 3), (resume, 5)]):
        _kill_when_recorded(start, run_dir, rows)
        killed_rows = len(_epochs(run_dir))
        assert rows <= killed_rows < epochs, f"kill {attempt}: {killed_rows} epochs recorded"
        assert _epochs(run_dir) == list(range(killed_rows))  # no epoch twice, none skipped
        assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
        checkpointed = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["epoch"]
        assert checkpointed >= killed_rows - 2  # every epoch is checkpointed: at most one epoch is lost

    resumed = subprocess.run(resume, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _epochs(run_dir) == list(range(epochs))  # every epoch exactly once
    assert _rows(run_dir) == _rows(tmp_path / "whole")  # losses, metrics and learning rates, bit for bit
    expected = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    got = json.loads((run_dir / "metrics.json").read_text())
    assert got["meta"]["best_epoch"] == expected["meta"]["best_epoch"]
    assert got["test"] == expected["test"] and got["val"] == expected["val"]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete" and info["resumed"] is True


def test_a_crafted_checkpoint_is_refused_on_resume_without_running(env, tmp_path):
    import torch

    from matcard.config import load_config

    class Payload:  # unpickling it would create the marker file
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (open, (str(marker), "w"))

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    marker = tmp_path / "pwned"
    config = load_config(overrides={"data.limit": 150, "trainer.threads": 1, "out": str(run_dir)})
    (run_dir / "config.yaml").write_text(config.to_yaml())
    (run_dir / "run.json").write_text(json.dumps({"status": "running"}))
    (run_dir / "checkpoints").mkdir()
    for name in ("best.ckpt", "last.ckpt"):
        torch.save({"state_dict": {}, "epoch": 3, "evil": Payload()}, run_dir / "checkpoints" / name)
    result = CliRunner().invoke(app, ["train", "--out", str(run_dir), "--resume", "--quiet"])
    assert result.exit_code == 1, result.output
    message = result.output.replace("\n", "")
    assert "refusing to load" in message and "best.ckpt" in message and "it refers to" in message
    assert not marker.exists()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and "refusing" in info["reason"]


def test_an_unknown_loss_exits_2_before_heavy_imports(env, tmp_path):
    started = time.perf_counter()
    done = subprocess.run([MATCARD, "train", "--loss", "nope", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    seconds = time.perf_counter() - started
    assert done.returncode == 2
    assert "loss.name" in done.stderr and "'nope'" in done.stderr and "magnitude" in done.stderr
    assert seconds < 10, f"took {seconds:.1f} s: heavy imports ran before validating the loss name"
    assert not (tmp_path / "r").exists()
