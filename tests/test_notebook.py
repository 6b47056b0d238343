"""examples/quickstart.ipynb runs top to bottom (on the venv's own kernel), so it cannot rot."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_executes(monkeypatch: pytest.MonkeyPatch, shared_data: Path) -> None:
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    monkeypatch.setenv("MATCARD_NOTEBOOK_QUICK", "1")  # the kernel inherits it: the smallest budget
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    started = time.perf_counter()
    # "python3" is ipykernel's own kernel: the Python of the venv running these tests.
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    seconds = time.perf_counter() - started
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs
    )
    assert "imbalance ratio" in text and "weighted_ce" in text and "screened 70 structures" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # class counts and recall plots
    print(f"\nquickstart notebook executed in {seconds:.0f} s")
    assert seconds < 240
