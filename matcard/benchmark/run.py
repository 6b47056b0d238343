"""Running a study: every cell (resumable, in worker processes), then its summary rows."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from matcard.benchmark.cells import run_cell, synthetic_class_names
from matcard.benchmark.planning import Cell, plan_cells, read_cell
from matcard.benchmark.report import write_outputs
from matcard.benchmark.schema import BenchmarkConfig, BenchmarkResult
from matcard.benchmark.stats import choose_minority
from matcard.benchmark.summary import summarise
from matcard.fileio import atomic_write_text

# rough relative cost of a cell, to start the slowest first (better packing over the workers)
_COST = {"ot_reweight": 2.0, "magnitude": 1.5, "spread": 1.2}
# per epoch against cgcnn on crystal graphs: the line graph makes alignn several times slower, a
# fine-tuned CHGNet slower still, and an MLP on one vector per structure nearly free
_MODEL_COST = {"alignn": 5.0, "chgnet_finetune": 20.0, "mlp": 0.3}


def _cost(cell: Cell) -> float:
    settings = cell.settings
    if cell.kind == "train":
        loss = settings["loss"]["name"]
        epochs = settings["trainer"]["epochs"]
        model = _MODEL_COST.get(settings["model"]["name"], 1.0)
    else:
        loss = settings["loss"]
        epochs = settings["synthetic"]["epochs"]
        model = 1.0
    return _COST.get(loss, 1.0) * model * float(epochs)


def run_benchmark(
    config: BenchmarkConfig,
    out_dir: str | os.PathLike[str],
    *,
    workers: int | None = None,
    on_cell_done: Callable[[Cell, dict[str, Any], bool], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    output_suffix: str = "",
) -> BenchmarkResult:
    """Run (or resume) every cell, then summarise and write CSV, JSON, markdown and plots.

    Count-matched control cells run in a second pass, once the cells whose realised class weights
    they copy have finished. ``output_suffix`` goes into the names of the summary files
    (``table-vs-ce_tuned.md``), so a comparison against another baseline does not replace the
    study's own tables.

    ``on_start(total, pending)`` is called once the plan is known; ``on_cell_done(cell, record,
    reused)`` after each finished (or reused) cell.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    cells = plan_cells(config, out)
    records: dict[tuple[str, int], dict[str, Any]] = {}
    pending = _reuse_finished(cells, records, None)
    if on_start:
        on_start(len(cells), len(pending))
    for cell in cells:
        if (cell.label, cell.seed) in records and on_cell_done:
            on_cell_done(cell, records[(cell.label, cell.seed)], True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "study.yaml", _config_yaml(config))

    n_workers = max(1, min(workers or config.workers, len(pending) or 1))
    if pending and config.kind == "train":
        class_names = _warm_caches(pending)
    else:
        class_names = synthetic_class_names(int(config.synthetic.get("n_classes", 10)))
    if isinstance(config.minority, list):  # fail before training, not after it
        choose_minority(config, class_names, np.ones(len(class_names)))

    def store(cell: Cell, record: dict[str, Any]) -> None:
        records[(cell.label, cell.seed)] = record
        if on_cell_done:
            on_cell_done(cell, record, False)

    trained = [cell for cell in pending if cell.waits_for is None]
    _run_cells(trained, n_workers, store)
    if any(cell.waits_for for cell in pending):  # their entries' cells have finished now
        cells = plan_cells(config, out)
        waiting = {(c.label, c.seed) for c in pending if c.waits_for}
        controls = [c for c in cells if (c.label, c.seed) in waiting]
        todo = _reuse_finished(controls, records, on_cell_done)
        _run_cells(todo, n_workers, store)
        trained += todo

    result = summarise(config, cells, records, out)
    result.elapsed_s = time.perf_counter() - started
    result.reused_cells = len(cells) - len(trained)
    result.trained_cells = len(trained)
    result.workers = n_workers if trained else workers or config.workers
    result.files = write_outputs(result, cells, output_suffix)
    return result


def _reuse_finished(
    cells: Sequence[Cell],
    records: dict[tuple[str, int], dict[str, Any]],
    on_cell_done: Callable[[Cell, dict[str, Any], bool], None] | None,
) -> list[Cell]:
    """Store the records of finished cells; return the others."""
    pending = []
    for cell in cells:
        record = read_cell(cell)
        if record is None:
            pending.append(cell)
            continue
        records[(cell.label, cell.seed)] = record
        if on_cell_done:
            on_cell_done(cell, record, True)
    return pending


def _run_cells(cells: list[Cell], n_workers: int, store: Callable[[Cell, dict[str, Any]], None]) -> None:
    """Train ``cells`` (the slowest first), in this process or a pool of spawned workers."""
    cells = sorted(cells, key=lambda c: -_cost(c))
    if cells and n_workers == 1:
        for cell in cells:
            store(cell, run_cell(cell))
    elif cells:
        by_dir = {cell.directory: cell for cell in cells}
        pool = get_context("spawn").Pool(min(n_workers, len(cells)))
        try:
            for record_dir, record in pool.imap_unordered(_run_cell_star, cells):
                store(by_dir[record_dir], record)
            pool.close()
        except BaseException:
            pool.terminate()  # Ctrl-C or a failed cell: stop the others now; finished cells are kept
            raise
        finally:
            pool.join()


def _run_cell_star(cell: Cell) -> tuple[Path, dict[str, Any]]:
    return cell.directory, run_cell(cell)


def _warm_caches(cells: Sequence[Cell]) -> list[str]:
    """Download, parse and featurize once per distinct input (the data section and the resolved
    featurizer settings) in this process, before the workers start: they then only read the caches
    instead of building the same one at once (a study that compares representations needs several;
    models that share a featurizer share its cache). Returns the class names."""
    from matcard.config import load_config
    from matcard.training import prepare_data

    class_names: list[str] = []
    warmed: set[str] = set()
    for cell in cells:
        config = load_config(base=cell.settings)
        inputs = {"data": cell.settings["data"], "featurizer": config.featurizer_settings()}
        key = json.dumps(inputs, sort_keys=True, default=str)
        if key not in warmed:
            warmed.add(key)
            class_names = prepare_data(config, None, write=False, progress=True).class_names
    return class_names


def _config_yaml(config: BenchmarkConfig) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
