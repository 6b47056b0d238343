"""Running one cell (a training run or a synthetic run) and reading its record and predictions."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from matcard._version import __version__
from matcard.benchmark.planning import Cell
from matcard.benchmark.schema import CELL_FILE
from matcard.fileio import atomic_path, atomic_write_json, atomic_write_text


@dataclass
class _Trained:
    """What a trained cell hands to its record."""

    predictions: Any  # test rows of matcard.training.prediction_table
    data: dict[str, Any]  # dataset, task and split sizes
    train_class_counts: list[int]
    selected_epoch: int | None
    epochs_run: int | None
    val_macro_f1: float | None
    # what the trained loss did: metrics.json's ``loss``, ``collapsed`` and ``collapse``
    diagnostics: dict[str, Any] = field(default_factory=dict)


def run_cell(cell: Cell) -> dict[str, Any]:
    """Train one cell (resuming an interrupted training run) and write its ``cell.json``."""
    import torch

    from matcard.metrics import classification_metrics

    started = time.perf_counter()
    torch.set_num_threads(int(cell.settings.get("trainer", {}).get("threads") or 1))
    trained = _train_cell(cell) if cell.kind == "train" else _synthetic_cell(cell)
    y, proba, class_names = prediction_arrays(trained.predictions)
    ids = "\n".join(map(str, trained.predictions["id"]))
    record = {
        "label": cell.label,
        "seed": cell.seed,
        "key": cell.key,
        "kind": cell.kind,
        "class_names": class_names,
        "data": trained.data,
        "train_class_counts": trained.train_class_counts,
        "n_test": len(y),
        "test_ids_sha256": hashlib.sha256(ids.encode()).hexdigest(),
        "selected_epoch": trained.selected_epoch,
        "epochs_run": trained.epochs_run,
        "val_macro_f1": trained.val_macro_f1,
        "test": classification_metrics(y, proba, class_names),
        "seconds": round(time.perf_counter() - started, 2),
        **trained.diagnostics,
        "matcard_version": __version__,
    }
    atomic_write_json(cell.directory / CELL_FILE, record)
    return record


def _train_cell(cell: Cell) -> _Trained:
    """A complete ``matcard.train`` run in the cell's folder (continued if one was interrupted)."""
    from matcard.training import read_predictions, train

    resume = (cell.directory / "config.yaml").is_file()
    result = train(cell.settings, resume=resume, progress=False)
    meta = result.metrics["meta"]
    return _Trained(
        predictions=read_predictions(cell.directory, "test"),
        data={key: meta.get(key) for key in ("dataset", "task", "n_train", "n_val", "n_test")},
        train_class_counts=list(meta["train_class_counts"]),
        selected_epoch=meta.get("best_epoch"),
        epochs_run=meta.get("epochs_run"),
        val_macro_f1=result.metrics["val"]["macro_f1"],
        diagnostics={key: result.metrics.get(key) for key in ("loss", "collapsed", "collapse")},
    )


def _synthetic_cell(cell: Cell) -> _Trained:
    """One validation-selected run of the reference synthetic experiment; writes its history and
    test predictions into the cell's folder."""
    import pandas as pd

    from matcard import collapse, reproduce
    from matcard.training import prediction_table

    settings = cell.settings
    synthetic = reproduce.SyntheticConfig(seeds=(cell.seed,), **settings["synthetic"])
    spec = settings["loss"] + (f"+{settings['variant']}" if settings["variant"] else "")
    run = reproduce.train_synthetic(
        synthetic, spec, cell.seed, "validation_selected", loss_params=settings["params"],
        optimizer=settings["optimizer"],
    )  # fmt: skip
    assert run.selected_proba is not None  # validation_selected always selects an epoch
    cell.directory.mkdir(parents=True, exist_ok=True)
    history = pd.DataFrame(run.records)
    atomic_write_text(cell.directory / "history.csv", history.to_csv(index=False))
    class_names = synthetic_class_names(synthetic.n_classes)
    ids = np.arange(len(run.test_labels))
    frame = prediction_table("test", ids, run.test_labels, run.selected_proba, class_names)
    with atomic_path(cell.directory / "predictions.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    data = reproduce.make_synthetic(synthetic, cell.seed)
    # the synthetic protocol keeps no validation predictions: judge the selected epoch on test
    verdict = collapse.assess(run.selected_proba.argmax(axis=1), run.test_labels, class_names)
    return _Trained(
        predictions=frame,
        data={
            "dataset": "synthetic",
            "task": f"{synthetic.n_classes} classes, majority {synthetic.majority:g}",
            "n_train": len(data["y_fit"]),
            "n_val": len(data["y_val"]),
            "n_test": len(data["y_test"]),
        },
        train_class_counts=np.bincount(data["y_fit"], minlength=synthetic.n_classes).tolist(),
        selected_epoch=run.selected_epoch,
        epochs_run=len(run.records),
        val_macro_f1=float(history["val_macro_f1"].max()),
        diagnostics={
            "loss": {"name": settings["loss"], "params": settings["params"], "realised_class_weights": None},
            "collapsed": verdict.collapsed,
            "collapse": {**verdict.to_dict(), "split": "test"},
        },
    )


def synthetic_class_names(n_classes: int) -> list[str]:
    return [f"class_{c}" for c in range(n_classes)]


def prediction_arrays(frame: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels as indices, probabilities [N, C], class names) from a predictions table."""
    columns = [column for column in frame.columns if column.startswith("prob_")]
    class_names = [column[len("prob_") :] for column in columns]
    index = {name: k for k, name in enumerate(class_names)}
    y = frame["label"].map(index).to_numpy(dtype=np.int64)
    return y, frame[columns].to_numpy(dtype=np.float64), class_names


def _cell_predictions(cell: Cell) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    frame = pd.read_parquet(cell.directory / "predictions.parquet")
    y, proba, _ = prediction_arrays(frame[frame["split"] == "test"])
    return y, proba


def collapsed_from_predictions(cell: Cell) -> bool:
    """The collapse verdict of a cell whose record predates it: from its stored validation
    predictions (the selected checkpoint's), or its test predictions where none were kept."""
    import pandas as pd

    from matcard import collapse

    frame = pd.read_parquet(cell.directory / "predictions.parquet")
    split = "val" if (frame["split"] == "val").any() else "test"
    y, proba, class_names = prediction_arrays(frame[frame["split"] == split])
    return collapse.assess(proba.argmax(axis=1), y, class_names).collapsed
