"""Running a study: every cell (resumable, in worker processes), then its summary rows."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from matcard._version import __version__
from matcard.benchmark.cells import (
    _cell_predictions,
    read_cell,
    run_cell,
    synthetic_class_names,
)
from matcard.benchmark.planning import Cell, plan_cells
from matcard.benchmark.report import write_outputs
from matcard.benchmark.schema import PAIRED_METRICS, TABLE_METRICS, BenchmarkConfig, BenchmarkResult
from matcard.benchmark.stats import choose_minority, minority_recall, paired_bootstrap
from matcard.errors import MatcardError
from matcard.fileio import atomic_write_text

# rough relative cost of a cell, to start the slowest first (better packing over the workers)
_COST = {"ot_reweight": 2.0, "magnitude": 1.5, "spread": 1.2}


def _cost(cell: Cell) -> float:
    settings = cell.settings
    if cell.kind == "train":
        loss = settings["loss"]["name"]
        epochs = settings["trainer"]["epochs"]
    else:
        loss = settings["loss"]
        epochs = settings["synthetic"]["epochs"]
    return _COST.get(loss, 1.0) * float(epochs)


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

    ``output_suffix`` goes into the names of the summary files (``table-vs-ce_tuned.md``), so a
    comparison against another baseline does not replace the study's own tables.

    ``on_start(total, pending)`` is called once the plan is known; ``on_cell_done(cell, record,
    reused)`` after each finished (or reused) cell.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    cells = plan_cells(config, out)
    records: dict[tuple[str, int], dict[str, Any]] = {}
    pending: list[Cell] = []
    for cell in cells:
        record = read_cell(cell)
        if record is None:
            pending.append(cell)
        else:
            records[(cell.label, cell.seed)] = record
    if on_start:
        on_start(len(cells), len(pending))
    for cell in cells:
        if (cell.label, cell.seed) in records and on_cell_done:
            on_cell_done(cell, records[(cell.label, cell.seed)], True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "study.yaml", _config_yaml(config))

    pending.sort(key=lambda c: -_cost(c))
    n_workers = max(1, min(workers or config.workers, len(pending) or 1))
    if pending and config.kind == "train":
        class_names = _warm_caches(pending[0])
    else:
        class_names = synthetic_class_names(int(config.synthetic.get("n_classes", 10)))
    if isinstance(config.minority, list):  # fail before training, not after it
        choose_minority(config, class_names, np.ones(len(class_names)))

    def store(cell: Cell, record: dict[str, Any]) -> None:
        records[(cell.label, cell.seed)] = record
        if on_cell_done:
            on_cell_done(cell, record, False)

    if pending and n_workers == 1:
        for cell in pending:
            store(cell, run_cell(cell))
    elif pending:
        by_dir = {cell.directory: cell for cell in pending}
        pool = get_context("spawn").Pool(n_workers)
        try:
            for record_dir, record in pool.imap_unordered(_run_cell_star, pending):
                store(by_dir[record_dir], record)
            pool.close()
        except BaseException:
            pool.terminate()  # Ctrl-C or a failed cell: stop the others now; finished cells are kept
            raise
        finally:
            pool.join()

    result = summarise(config, cells, records, out)
    result.elapsed_s = time.perf_counter() - started
    result.reused_cells = len(cells) - len(pending)
    result.trained_cells = len(pending)
    result.workers = n_workers if pending else workers or config.workers
    result.files = write_outputs(result, cells, output_suffix)
    return result


def _run_cell_star(cell: Cell) -> tuple[Path, dict[str, Any]]:
    return cell.directory, run_cell(cell)


def _warm_caches(cell: Cell) -> list[str]:
    """Download, parse and featurize once, in this process, before the workers start (they then only
    read the caches instead of all building them at once); returns the task's class names."""
    from matcard.config import load_config
    from matcard.training import prepare_data

    return prepare_data(load_config(base=cell.settings), None, write=False, progress=True).class_names


def _config_yaml(config: BenchmarkConfig) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def summarise(
    config: BenchmarkConfig,
    cells: Sequence[Cell],
    records: dict[tuple[str, int], dict[str, Any]],
    out: Path,
) -> BenchmarkResult:
    """Per-seed rows, per-loss summary rows (mean ± std, paired differences with bootstrap CIs)."""
    baseline_records = [records[(config.baseline, s)] for s in config.seeds]
    class_names = list(baseline_records[0]["class_names"])
    counts = np.sum([r["train_class_counts"] for r in baseline_records], axis=0)
    minority = choose_minority(config, class_names, counts)
    minority_index = np.array([class_names.index(name) for name in minority])
    cell_of = {(cell.label, cell.seed): cell for cell in cells}

    per_seed: list[dict[str, Any]] = []
    for entry in config.losses:
        for seed in config.seeds:
            record = records[(entry.label, seed)]
            if record["class_names"] != class_names:
                raise MatcardError(f"{entry.label} seed {seed}: classes differ from the baseline's")
            baseline = records[(config.baseline, seed)]
            if record["test_ids_sha256"] != baseline["test_ids_sha256"]:
                raise MatcardError(
                    f"{entry.label} seed {seed} was tested on other items than {config.baseline} "
                    f"seed {seed}: the split must be the same for every loss of a seed"
                )
            test = record["test"]
            row: dict[str, Any] = {"loss": entry.label, "seed": seed}
            for metric in TABLE_METRICS:
                row[metric] = minority_recall(test, minority) if metric == "minority_recall" else test[metric]
            row.update(
                accuracy=test["accuracy"],
                mcc=test["mcc"],
                roc_auc_macro=test["roc_auc_macro"],
                val_macro_f1=record["val_macro_f1"],
                selected_epoch=record["selected_epoch"],
                epochs_run=record["epochs_run"],
                n_test=record["n_test"],
                seconds=record["seconds"],
            )
            row.update({f"recall_{name}": test["per_class"][name]["recall"] for name in class_names})
            per_seed.append(row)

    baseline_predictions = {s: _cell_predictions(cell_of[(config.baseline, s)]) for s in config.seeds}
    baseline_rows = {r["seed"]: r for r in per_seed if r["loss"] == config.baseline}
    summary: list[dict[str, Any]] = []
    for entry in config.losses:
        rows = [r for r in per_seed if r["loss"] == entry.label]
        row: dict[str, Any] = {"loss": entry.label, "name": entry.loss, "note": entry.note}
        for metric in (*TABLE_METRICS, "accuracy", "mcc", "roc_auc_macro", "seconds"):
            values = np.array([r[metric] for r in rows if r[metric] is not None], dtype=np.float64)
            row[metric] = float(values.mean()) if values.size else None
            row[f"{metric}_std"] = float(values.std(ddof=1)) if values.size > 1 else None
        for name in class_names:
            values = [r[f"recall_{name}"] for r in rows if r[f"recall_{name}"] is not None]
            row[f"recall_{name}"] = float(np.mean(values)) if values else None
        row["n_seeds"] = len(rows)
        intervals = {name: (0.0, 0.0) for name in PAIRED_METRICS}
        if entry.label != config.baseline:
            pairs = []
            for seed in config.seeds:
                y, proba = _cell_predictions(cell_of[(entry.label, seed)])
                _, proba_base = baseline_predictions[seed]
                pairs.append((y, proba.argmax(axis=1), proba_base.argmax(axis=1)))
            intervals = paired_bootstrap(
                pairs,
                len(class_names),
                minority_index,
                samples=config.bootstrap.samples,
                confidence=config.bootstrap.confidence,
                seed=config.bootstrap.seed,
            )
        for metric in PAIRED_METRICS:
            differences = [
                r[metric] - baseline_rows[r["seed"]][metric]
                for r in rows
                if r[metric] is not None and baseline_rows[r["seed"]][metric] is not None
            ]
            row[f"{metric}_vs_baseline"] = float(np.mean(differences)) if differences else None
            low, high = intervals[metric]
            row[f"{metric}_vs_baseline_ci"] = [low, high]
        summary.append(row)
    return BenchmarkResult(
        config=config,
        out_dir=out,
        summary=summary,
        per_seed=per_seed,
        minority_classes=minority,
        class_names=class_names,
        environment=environment(),
        data=dict(baseline_records[0].get("data") or {}),
    )


def environment() -> dict[str, Any]:
    """Hardware and versions, stated beside every table."""
    import importlib.metadata as metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("torch", "torch-geometric", "lightning", "pymatgen", "matminer", "scikit-learn", "pot"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": _gpu_name(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "matcard": __version__,
        "versions": versions,
    }


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # no usable CUDA: report none
        return None
