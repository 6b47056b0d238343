"""Text from files is data, never Rich markup: names, ids and reasons are shown literally by the CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from cli import app
from matcard.console import escape, make_progress, print_wide

runner = CliRunner()
# A real pymatgen message for a nearly flat cell (bad_superflat_inf_loop.cif) and a CIF value.
FLAT = "thickness=[np.float64(5.4e-08), np.float64(4.8e-08)] Å below threshold"


def _normalise(text: str) -> str:
    """Rendered table text without layout: whitespace and box-drawing characters removed."""
    return re.sub(r"[\s\u2500-\u257f…]", "", text)


def _render(*cells: str) -> str:
    table = Table()
    for _ in cells:
        table.add_column(overflow="fold")
    table.add_row(*(escape(cell) for cell in cells))
    out = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    out.print(table)
    return out.export_text()


@pytest.mark.parametrize("text", ["bad[red].cif", "_cell_length_a [/b]", FLAT, "[bold]x[/bold]", "a\\[b]"])
def test_escape_renders_text_literally(text: str) -> None:
    assert _normalise(text) in _normalise(_render(text))


@pytest.fixture
def markup_folder(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CGCNN folder plus a CIF named like markup holding markup as a value, and a flat cell."""
    folder = tmp_path / "in"
    shutil.copytree(shared_data / "cgcnn_sample_classification", folder)
    cif = (folder / "1000041.cif").read_text()
    bad = re.sub(r"(?m)^_cell_length_a\s+\S+", "_cell_length_a [/b]", cif)
    assert bad != cif
    (folder / "bad[red].cif").write_text(bad)
    shutil.copy(shared_data / "messy_cifs" / "bad_superflat_inf_loop.cif", folder)
    monkeypatch.chdir(tmp_path)  # short relative paths: table cells do not fold into each other
    return Path("in")


def test_inspect_shows_markup_like_names_and_reasons_literally(markup_folder: Path) -> None:
    args = ["inspect", str(markup_folder), "--workers", "1"]
    shown = runner.invoke(app, args)
    assert shown.exit_code == 0, shown.output
    summary = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    sources = {Path(f["source"]).name: f for f in summary["failures"]}
    assert set(sources) == {"bad[red].cif", "bad_superflat_inf_loop.cif"}
    assert "[/b]" in sources["bad[red].cif"]["detail"]
    assert "thickness=[np.float64(" in sources["bad_superflat_inf_loop.cif"]["detail"]
    rendered = _normalise(shown.output)
    for failure in summary["failures"]:
        assert _normalise(failure["source"]) in rendered
        assert _normalise(failure["reason"]) in rendered


def test_featurize_shows_markup_like_names_and_reasons_literally(markup_folder: Path, tmp_path: Path) -> None:
    args = ["featurize", str(markup_folder), "--jobs", "1", "--out", str(tmp_path / "graphs")]
    shown = runner.invoke(app, args)
    assert shown.exit_code == 0, shown.output
    summary = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert summary["read_failures"] == 2
    rendered = _normalise(shown.output)
    assert "bad[red].cif" in rendered
    for failure in summary["unreadable"]:
        assert _normalise(failure["source"]) in rendered and _normalise(failure["reason"]) in rendered


@pytest.mark.slow
def test_train_with_markup_in_paths_and_files_finishes(markup_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run[" / "b]"  # the path text is "run[/b]"
    args = ["train", "--dataset", str(markup_folder), "--task", "label", "--model", "mlp", "--epochs", "1"]
    result = runner.invoke(app, [*args, "--set", "trainer.threads=1", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "run[/b]" in _normalise(result.output)
    failures = (out / "failures.csv").read_text()
    assert "bad[red].cif" in failures and "[/b]" in failures


# --- output that fits the shell: results on stdout, progress and notices on stderr ---------------
REPO = Path(__file__).resolve().parent.parent


def _cli(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args], capture_output=True, text=True, timeout=300, **kwargs
    )  # type: ignore[call-overload]


def test_datasets_table_is_on_stdout_whole_for_grep() -> None:
    listing = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "datasets"], stdout=subprocess.PIPE)
    found = subprocess.run(["grep", "aflow-prototypes"], stdin=listing.stdout, capture_output=True, text=True)
    assert listing.wait(timeout=120) == 0
    assert found.returncode == 0 and "aflow-prototypes" in found.stdout
    rows = json.loads(_cli("datasets", "--json").stdout)
    text = _cli("datasets").stdout
    for row in rows:  # no cell folded mid-word at 80 columns: every task list is on the name's line
        line = next(line for line in text.splitlines() if f" {row['name']} " in line)
        assert ", ".join(row["tasks"]) in line and row["kind"] in line


def test_inspect_redirected_to_a_file_holds_the_table(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    folder = shared_data / "cgcnn_sample_classification"
    with out.open("w") as handle:
        done = subprocess.run(
            [sys.executable, str(REPO / "cli.py"), "inspect", str(folder)],
            stdout=handle,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr
    table = out.read_text()
    assert "inspect" in table and "structures" in table and "10" in table
    assert "structures" not in done.stderr


def test_json_stays_pure_with_plain_progress_lines_on_stderr(shared_data: Path) -> None:
    env = {**os.environ, "MATCARD_PROGRESS_INTERVAL": "0.05", "MATCARD_CIF_PARSER": "pymatgen"}
    done = _cli("inspect", str(shared_data / "messy_cifs"), "--json", "--workers", "1", env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # nothing but the JSON document
    assert summary["n_rows"] > 0
    assert re.search(r"Reading structures: [\d,]+.*s elapsed", done.stderr)  # a log is not left empty


def test_progress_writes_plain_lines_without_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MATCARD_PROGRESS_INTERVAL", "0.05")
    with make_progress() as bar:
        task = bar.add_task("Counting", total=8)
        for _ in range(8):
            time.sleep(0.06)
            bar.advance(task)
    captured = capsys.readouterr()
    assert re.search(r"Counting: \d/8 \(\d+ %\), \d+ s elapsed", captured.err)
    assert captured.out == ""


def test_print_wide_uses_the_width_a_table_needs(capsys: pytest.CaptureFixture[str]) -> None:
    table = Table(title="wide")
    for name in ("name", "tasks"):
        table.add_column(name, overflow="fold")
    long_cell = ", ".join(f"task_number_{i}" for i in range(20))
    table.add_row("structures", long_cell)
    print_wide(table)
    out = capsys.readouterr().out
    assert any("structures" in line and long_cell in line for line in out.splitlines())
    print_wide("a summary line " * 12, err=True)
    assert ("a summary line " * 12).strip() in capsys.readouterr().err
