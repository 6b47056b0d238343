"""``matcard calibrate RUN``: refit a run's decision layer without retraining.

Reads the held-out logits saved in ``RUN/predictions.parquet`` (``logit_<class>`` columns), or, for
runs written before them, recomputes them from the bundle and the saved split. Rewrites the bundle's
``decision`` section (re-sealed), the ``decision`` block of ``metrics.json`` and the
``predicted_tuned`` column of the predictions, each atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from matcard.errors import UsageError
from matcard.fileio import atomic_path, atomic_write_json

SPLITS = ("calibration", "val", "test")


def calibrate_run(
    run_dir: str | Path,
    *,
    objective: str | None = None,
    alpha: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Refit temperature, rule and conformal sets of a finished run; returns the new decision block."""
    from matcard.bundle import load_model, set_decision
    from matcard.calibration import parse_objective
    from matcard.config import load_config
    from matcard.decision import check_alpha, fit_for_splits

    run = Path(run_dir)
    if not (run / "config.yaml").is_file() or not (run / "model").is_dir():
        raise UsageError(f"{run} is not a finished training run (config.yaml and model/ expected)")
    config = load_config(run / "config.yaml")
    model = load_model(run / "model")
    previous = model.decision
    objective = objective or (previous.objective if previous else config.decision.objective)
    if alpha is None:
        saved = (previous.conformal or {}) if previous else {}
        alpha = float(saved.get("alpha", config.decision.alpha))
    check_alpha(alpha)
    parse_objective(objective, model.class_names, model.class_counts)  # exit 2 before any work
    logits, labels = _saved_logits(run, model.class_names)
    if logits is None:
        logits, labels = _recomputed_logits(config, run, model, progress)
    layer, block = fit_for_splits(
        logits, labels, model.class_names, model.class_counts, objective=objective, alpha=alpha
    )
    set_decision(run / "model", layer.to_dict())
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    metrics["decision"] = block
    atomic_write_json(metrics_path, metrics)
    _rewrite_tuned_column(run, load_model(run / "model"))
    return block


def _saved_logits(
    run: Path, class_names: list[str]
) -> tuple[dict[str, np.ndarray] | None, dict[str, np.ndarray]]:
    import pandas as pd

    path = run / "predictions.parquet"
    columns = [f"logit_{name}" for name in class_names]
    if not path.is_file():
        return None, {}
    table = pd.read_parquet(path)
    if not set(columns) <= set(table.columns) or not (table["split"] == "val").any():
        return None, {}
    logits: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    index = {name: k for k, name in enumerate(class_names)}
    for split in SPLITS:
        rows = table[table["split"] == split]
        if len(rows):
            logits[split] = rows[columns].to_numpy(dtype=np.float64)
            labels[split] = rows["label"].map(index).to_numpy(dtype=np.int64)
    return logits, labels


def _recomputed_logits(
    config: Any, run: Path, model: Any, progress: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    from matcard.data_prep import prepare_data

    data = prepare_data(config, run, write=False, resuming=True, progress=progress)
    logits: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    for split in SPLITS:
        if len(data.split.get(split, ())):
            graphs, labels[split] = data.subset(split)
            logits[split] = model.predict_logits_data(graphs, config.trainer.eval_batch_size)
    return logits, labels


def _rewrite_tuned_column(run: Path, model: Any) -> None:
    """predicted_tuned of the saved predictions, under the new rule (when they carry logits)."""
    import pandas as pd

    path = run / "predictions.parquet"
    if not path.is_file() or model.decision is None:
        return
    table = pd.read_parquet(path)
    columns = [f"logit_{name}" for name in model.class_names]
    if not set(columns) <= set(table.columns) or table.empty:
        return
    decided = model.decision.decide(table[columns].to_numpy(dtype=np.float64))
    table["predicted_tuned"] = [model.class_names[k] for k in decided.predicted]
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)
