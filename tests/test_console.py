"""Text from files is data, never Rich markup: names, ids and reasons are shown literally by the CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from cli import app
from matcard.console import escape

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
