"""Training on Lightning: ``train(config) -> TrainResult`` writes a complete run directory.

Run directory layout::

    RUN/config.yaml            resolved configuration (what was actually run)
    RUN/splits/                train / val / test ids (chosen before training; reused by evaluate)
    RUN/history.csv            one row per epoch (losses, validation metrics, learning rate, time)
    RUN/checkpoints/           last.ckpt (every epoch: exact resume) and best.ckpt (best validation macro-F1)
    RUN/model/                 self-describing bundle (matcard.bundle)
    RUN/metrics.json           ``val`` and ``test`` sections (matcard.metrics), from the best checkpoint
    RUN/predictions.parquet    per-item val and test predictions (split, id, label, predicted, prob_<class>)
    RUN/confusion_matrix.png   test confusion matrix
    RUN/per_class_recall.png   per-class recall, val and test
    RUN/failures.csv           items that could not be read or featurized (only when there are any)
    RUN/run.json               status (running / complete / failed + reason), timings, versions

Checkpoints are selected on the validation split only; the test split is evaluated once, at the end.
The parts live in their own modules (re-exported here): data preparation in ``matcard.data_prep``,
the Lightning module and callbacks in ``matcard.train_loop``, checkpoints in ``matcard.checkpoints``,
the run directory and run.json in ``matcard.run_state``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matcard.config import TrainConfig, load_config
from matcard.console import console, escape
from matcard.data_prep import (
    SPLIT_FILE,
    SPLIT_NAMES,
    PreparedData,
    _stratified_subset,
    featurize_for,
    prepare_data,
    training_stats,
)
from matcard.errors import ConfigError, MatcardError, UsageError
from matcard.fileio import atomic_path, atomic_write_json
from matcard.names import INPUT_FEATURIZERS
from matcard.run_state import (
    RESUMABLE_CHANGES,
    clear_run,
    global_rank_from_env,
    mark_failed,
    resolve_run,
    run_status,
    write_run_json,
)
from matcard.train_loop import (
    HISTORY_COLUMNS,
    MONITOR,
    _callback_classes,
    _lightning_module_class,
    _optimizers,
    checkpoint_callbacks,
    write_history,
)

if TYPE_CHECKING:
    from torch_geometric.data import Data

    from matcard.bundle import TrainedModel

PREDICTIONS_FILE = "predictions.parquet"


@dataclass
class TrainResult:
    run_dir: Path
    model: TrainedModel | None  # None on non-zero DDP ranks
    metrics: dict[str, Any] = field(default_factory=dict)
    config: TrainConfig | None = None
    is_global_zero: bool = True
    resumed: bool = False
    epochs_run: int = 0
    best_epoch: int | None = None
    failures: list[dict[str, str]] = field(default_factory=list)


def train(
    config: TrainConfig | dict[str, Any] | str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> TrainResult:
    """Train a classifier and write its run directory; returns a TrainResult.

    ``config`` is a TrainConfig, a nested dict, or a YAML path; keyword arguments override fields
    by CLI short name or dotted path (``epochs=5``, ``loss="magnitude"``, ``**{"optim.lr": 1e-3}``).
    With ``resume=True`` the run at ``out`` continues exactly from ``checkpoints/last.ckpt``; a run
    that already completed is returned as it is. ``overwrite=True`` discards a run already at ``out``.
    A failure marks ``run.json`` failed with its reason.
    """
    started = time.perf_counter()
    config, run_dir, resuming = resolve_run(config, resume=resume, overwrite=overwrite, **overrides)
    is_zero = global_rank_from_env() == 0
    _quiet_lightning()
    # a finished run is returned as it is, unless it is asked for more epochs than it had
    if (
        resuming
        and run_status(run_dir) == "complete"
        and (run_dir / "metrics.json").is_file()
        and config.trainer.epochs <= load_config(run_dir / "config.yaml").trainer.epochs
    ):
        return _completed_result(config, run_dir)

    preflight(config)  # model / loss / featurizer settings fail here, before any data work

    if is_zero:
        if not resuming:  # --overwrite, or a run that failed before training: start from a clean slate
            clear_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        from matcard.fileio import atomic_write_text

        atomic_write_text(run_dir / "config.yaml", config.to_yaml())
        write_run_json(run_dir, config, status="running", resumed=resuming)
    try:
        data = prepare_data(config, run_dir, write=is_zero, resuming=resuming, progress=progress and is_zero)
        return _fit_and_finish(config, run_dir, data, resuming, started, progress, is_zero)
    except BaseException as error:
        if is_zero:
            mark_failed(run_dir, error)
        raise


def _completed_result(config: TrainConfig, run_dir: Path) -> TrainResult:
    import json

    from matcard.bundle import load_model

    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    meta = metrics.get("meta", {})
    return TrainResult(
        run_dir=run_dir,
        model=load_model(run_dir / "model"),
        metrics=metrics,
        config=config,
        resumed=True,
        epochs_run=int(meta.get("epochs_run", 0)),
        best_epoch=meta.get("best_epoch"),
    )


def _quiet_lightning() -> None:
    """Keep Lightning's informational banners (accelerator, tips) out of the user's terminal."""
    import logging
    import warnings

    import lightning  # noqa: F401  (creates its loggers, whose levels are set below)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("lightning", "pytorch_lightning")):
            logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*Trainer.fit. stopped.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")  # resume


def preflight(config: TrainConfig) -> None:
    """Validate what can be validated without data: model params, loss name/params, featurizer."""
    from matcard import losses
    from matcard.featurize import featurizer_from_config
    from matcard.models import build_model

    # the model first: chgnet_finetune's model.params.model_version also sets its featurizer's
    build_model(config.model.name, 4, 2, **_model_params(config))
    try:
        featurizer_from_config(config.featurizer_settings())
    except MatcardError:
        raise
    except Exception as error:
        raise ConfigError(f"featurizer.params: {error}") from error
    # per-class lists (weighted_ce weights, focal alpha) fix the class count; the data checks it later
    lists = [v for k, v in config.loss.params.items() if k in ("weights", "alpha") and isinstance(v, list)]
    n_classes = len(lists[0]) if lists and len(lists[0]) >= 2 else 2
    try:
        losses.build(config.loss.name, [10] * n_classes, **config.loss.params)
    except ConfigError as error:
        raise ConfigError(f"loss: {error}") from error


def _model_params(config: TrainConfig) -> dict[str, Any]:
    """Model parameters, with the distance-expansion cutoff tied to the featurizer's by default."""
    from matcard.models import model_param_names

    params = dict(config.model.params)
    if config.featurizer_kind() == "chgnet_graph":  # pinned in the bundle even when left at the default
        params.setdefault("model_version", config.featurizer_settings()["model_version"])
    if "cutoff" in model_param_names(config.model.name) and "cutoff" not in params:
        params["cutoff"] = float(config.featurizer.params.get("cutoff", 8.0))
    return params


SAMPLERS = ("none", "class_balanced", "under")


def _train_loader_and_graphs(config: TrainConfig, data: PreparedData) -> tuple[Any, list[Data]]:
    """Training DataLoader with the configured sampler, or resampled descriptors (imbalanced-learn)."""
    import torch

    from matcard import losses
    from matcard.loaders import make_loader

    graphs, y = data.subset("train")
    name = config.sampler.name.strip().lower().replace("-", "_")
    params = dict(config.sampler.params)
    sampler = None
    if name in ("class_balanced", "balanced"):
        sampler = losses.ClassBalancedSampler(y, seed=config.trainer.seed, **params)
    elif name in ("under", "undersample", "random_under_sampler"):
        sampler = losses.UnderSampler(y, seed=config.trainer.seed, **params)
    elif name in losses.RESAMPLERS:
        if config.featurizer_kind() not in INPUT_FEATURIZERS["vector"]:
            raise ConfigError(
                f"sampler.name: {name!r} interpolates descriptor vectors and needs vector features "
                "(composition or chgnet); "
                "for crystal graphs use class_balanced or under"
            )
        features = torch.cat([g.x for g in graphs]).numpy()
        x_res, y_res = losses.resample(features, y, name, random_state=config.trainer.seed, **params)
        from torch_geometric.data import Data as PygData

        graphs = [
            PygData(x=torch.as_tensor(row, dtype=torch.float32).view(1, -1), y=torch.tensor([int(label)]))
            for row, label in zip(x_res, y_res, strict=True)
        ]
        y = np.asarray(y_res)
    elif name != "none":
        raise ConfigError(
            f"sampler.name: unknown sampler {config.sampler.name!r}; choose one of "
            f"{[*SAMPLERS, *sorted(losses.RESAMPLERS)]}"
        )
    loader = make_loader(
        config.featurizer_kind(),
        graphs,
        y,
        batch_size=config.trainer.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=config.trainer.num_workers,
    )
    return loader, graphs


def accelerator_is_cpu(name: str) -> bool:
    return resolve_accelerator(name) == "cpu"


def cpu_threads(requested: int | None, processes: int = 1) -> int:
    """Intra-op threads for CPU training. Explicit, or the cores left idle by other processes.

    Small crystal graphs gain little from intra-op parallelism, while oversubscribed OpenMP threads
    collapse: CGCNN on the AFLOW prototypes ran at 330 graphs/s with 1 thread but 30-100 graphs/s with
    2 threads on 2 cores already busy with other work (load average ~7).
    """
    if requested is not None:
        return requested
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0
    idle = int(cores - busy + 0.5)
    return max(1, min(8, idle // max(1, processes), cores // max(1, processes)))


def resolve_accelerator(name: str) -> str:
    import torch

    if name in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"trainer.accelerator={name!r} but no CUDA device is available")
        return "cuda"
    if name == "mps":
        return "mps"
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    return name


def _strategy(trainer_cfg: Any, accelerator: str) -> Any:
    world = trainer_cfg.devices * trainer_cfg.num_nodes
    strategy: Any = trainer_cfg.strategy
    if strategy == "auto":
        strategy = "ddp" if world > 1 else "auto"
    if strategy in ("ddp", "ddp_spawn", "ddp_fork") and world > 1:
        from lightning.pytorch.strategies import DDPStrategy

        # gloo on CPU; nccl on CUDA. Losses may carry parameters that do not get gradients every step.
        strategy = DDPStrategy(
            start_method={"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork"}[strategy],
            process_group_backend="gloo" if accelerator == "cpu" else None,
            find_unused_parameters=True,
        )
    return strategy


def _trainer(config: TrainConfig, run_dir: Path, callbacks: list[Any], n_batches: int) -> Any:
    import lightning as L

    from matcard.checkpoints import checkpoint_io_class

    trainer_cfg = config.trainer
    accelerator = resolve_accelerator(trainer_cfg.accelerator)
    return L.Trainer(
        max_epochs=trainer_cfg.epochs,
        accelerator=accelerator,
        devices=trainer_cfg.devices,
        num_nodes=trainer_cfg.num_nodes,
        strategy=_strategy(trainer_cfg, accelerator),
        precision=trainer_cfg.precision,
        # CUDA scatter kernels have no deterministic implementation: warn there instead of failing.
        deterministic=trainer_cfg.deterministic
        if accelerator == "cpu"
        else ("warn" if trainer_cfg.deterministic else False),
        callbacks=callbacks,
        # atomic checkpoint writes; checkpoint reads never unpickle code (weights_only)
        plugins=[checkpoint_io_class()()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=config.optim.grad_clip,
        num_sanity_val_steps=0,
        default_root_dir=str(run_dir),
        log_every_n_steps=max(1, n_batches),
    )


def _fit(trainer: Any, module: Any, loaders: tuple[Any, Any], run_dir: Path, resuming: bool) -> None:
    """trainer.fit, resuming from last.ckpt after checking every checkpoint loads as plain data."""
    from matcard.checkpoints import checked_resume_checkpoints

    checkpoint_dir = run_dir / "checkpoints"
    ckpt_path = None
    if resuming:
        last = checked_resume_checkpoints(checkpoint_dir) if checkpoint_dir.is_dir() else None
        ckpt_path = None if last is None else str(last)
        if ckpt_path is None and trainer.is_global_zero:
            console.print(
                f"[yellow]no checkpoint in {escape(checkpoint_dir)}; "
                f"training {escape(run_dir)} from the start[/]"
            )
    resume_hint = f"continue with: matcard train --out {run_dir} --resume"
    try:
        trainer.fit(module, *loaders, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit as stop:  # Lightning's graceful Ctrl-C shutdown ends with sys.exit(1)
        if trainer.interrupted:
            raise MatcardError(
                f"training interrupted at epoch {trainer.current_epoch + 1}; {resume_hint}"
            ) from None
        raise stop
    except RuntimeError as error:
        if "checkpoint" in str(error).lower() and ckpt_path is not None:
            raise MatcardError(f"cannot resume from {ckpt_path}: {error}") from error
        raise
    if trainer.interrupted:
        raise MatcardError(f"training interrupted at epoch {trainer.current_epoch + 1}; {resume_hint}")


def _fit_and_finish(
    config: TrainConfig,
    run_dir: Path,
    data: PreparedData,
    resuming: bool,
    started: float,
    progress: bool,
    is_zero: bool,
) -> TrainResult:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import EarlyStopping

    from matcard import collapse, losses
    from matcard.loaders import make_loader
    from matcard.models import build_model

    trainer_cfg = config.trainer
    # Denormal floats (tiny gradients behind CGConv's sigmoid gates) made CPU matmuls ~10x slower
    # in measurements on CGCNN batches (bwd 0.21 s -> 0.02 s for 32 graphs); flushing them is harmless.
    torch.set_flush_denormal(True)
    if accelerator_is_cpu(trainer_cfg.accelerator):
        torch.set_num_threads(cpu_threads(trainer_cfg.threads, trainer_cfg.devices))
    L.seed_everything(trainer_cfg.seed, workers=True, verbose=False)
    n_classes = len(data.class_names)
    model = build_model(config.model.name, _in_dim(data), n_classes, **_model_params(config))
    train_loader, _ = _train_loader_and_graphs(config, data)
    if hasattr(model, "fit_input_scaling"):
        model.fit_input_scaling(torch.cat([g.x for g in data.subset("train")[0]]))
    loss = losses.build(config.loss.name, data.class_counts("train"), **config.loss.params)
    module = _lightning_module_class()(model, loss, config, n_classes, sampler=train_loader.sampler)
    val_loader = make_loader(
        config.featurizer_kind(), *data.subset("val"), batch_size=trainer_cfg.eval_batch_size
    )

    best_checkpoint, last_checkpoint = checkpoint_callbacks(run_dir / "checkpoints")
    history_cls, progress_cls = _callback_classes()
    history = history_cls(run_dir / "history.csv", enabled=is_zero)
    callbacks: list[Any] = [history, progress_cls(progress), best_checkpoint, last_checkpoint]
    callbacks.append(collapse.monitor_callback())
    if trainer_cfg.patience is not None:
        callbacks.append(
            EarlyStopping(monitor=MONITOR, mode="max", patience=trainer_cfg.patience, check_finite=False)
        )
    trainer = _trainer(config, run_dir, callbacks, len(train_loader))
    _fit(trainer, module, (train_loader, val_loader), run_dir, resuming)
    if not trainer.is_global_zero:
        return TrainResult(run_dir, None, config=config, is_global_zero=False)
    return _finish(config, run_dir, data, best_checkpoint.best_model_path, module, history.rows,
                   resuming, started)  # fmt: skip


def _record_collapse_and_loss(
    config: TrainConfig,
    data: PreparedData,
    metrics: dict[str, Any],
    val_probabilities: np.ndarray,
    history_rows: list[dict[str, Any]],
    loss: Any,
) -> None:
    """The collapse verdict (warned about) and what the loss did, including the class weights it
    realised (a count-matched control is built from them)."""
    from matcard import collapse

    verdict = collapse.assess(
        val_probabilities.argmax(axis=1),
        data.subset("val")[1],
        data.class_names,
        [row.get(collapse.HISTORY_COLUMN, math.nan) for row in history_rows],
    )
    metrics.update(collapsed=verdict.collapsed, collapse=verdict.to_dict())
    metrics["loss"] = collapse.loss_record(config.loss.name, config.loss.params, loss)
    if verdict.collapsed:
        console.print(f"[yellow]warning: {escape(collapse.warning_text(verdict, config.loss.name))}[/]")


def _best_model(
    config: TrainConfig, data: PreparedData, best_path: str, module: Any
) -> tuple[Any, int | None]:
    """The model of the best validation checkpoint (read as plain data) and its epoch."""
    from matcard.checkpoints import load_checkpoint
    from matcard.models import build_model

    if not (best_path and Path(best_path).is_file()):
        return module.model.cpu(), None
    state = load_checkpoint(best_path)
    weights = {k[len("model.") :]: v for k, v in state["state_dict"].items() if k.startswith("model.")}
    model = build_model(config.model.name, _in_dim(data), len(data.class_names), **_model_params(config))
    model.load_state_dict(weights)
    return model, int(state.get("epoch", -1))


def _save_bundle(
    config: TrainConfig, run_dir: Path, data: PreparedData, model: Any, best_epoch: int | None
) -> None:
    from matcard.bundle import save_bundle

    save_bundle(
        run_dir / "model",
        model,
        model_name=config.model.name,
        model_params=_model_params(config),
        in_dim=_in_dim(data),
        featurizer_config=data.featurizer.config.model_dump(mode="json"),
        class_names=data.class_names,
        class_counts=data.class_counts("train").tolist(),
        task=data.task,
        training_stats=data.training_stats,
        provenance={
            "dataset": data.dataset_name,
            "task": getattr(data.task, "name", config.data.task),
            "loss": config.loss.model_dump(mode="json"),
            "sampler": config.sampler.model_dump(mode="json"),
            "seed": config.trainer.seed,
            "best_epoch": best_epoch,
            "run_dir": str(run_dir.resolve()),
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def _finish(
    config: TrainConfig,
    run_dir: Path,
    data: PreparedData,
    best_path: str,
    module: Any,
    history_rows: list[dict[str, Any]],
    resuming: bool,
    started: float,
) -> TrainResult:
    """Bundle the best checkpoint's model, measure it on val and test, write metrics, plots, run.json."""
    from matcard.bundle import load_model
    from matcard.metrics import classification_metrics, plot_confusion_matrix, plot_per_class_recall

    trainer_cfg = config.trainer
    model, best_epoch = _best_model(config, data, best_path, module)
    train_counts = data.class_counts("train")
    _save_bundle(config, run_dir, data, model, best_epoch)
    trained = load_model(run_dir / "model", device="cpu")
    metrics: dict[str, Any] = {}
    logits: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    for name in ("calibration", "val", "test"):
        if len(data.split.get(name, ())) or name != "calibration":
            graphs, labels[name] = data.subset(name)
            logits[name] = trained.predict_logits_data(graphs, batch_size=trainer_cfg.eval_batch_size)
    probabilities = {name: _softmax(logits[name]) for name in ("val", "test")}
    for name in ("val", "test"):
        metrics[name] = classification_metrics(labels[name], probabilities[name], trained.class_names)
    trained, metrics["decision"] = _fit_decision_layer(config, run_dir, trained, logits, labels, train_counts)
    write_predictions(run_dir / PREDICTIONS_FILE, data, probabilities, logits=logits, model=trained)
    metrics["meta"] = {
        "class_names": data.class_names,
        "train_class_counts": train_counts.tolist(),
        "n_train": len(data.split["train"]),
        "n_val": len(data.split["val"]),
        "n_test": len(data.split["test"]),
        "best_epoch": best_epoch,
        "epochs_run": len(history_rows),
        "selected_on": MONITOR,
        "model": config.model.name,
        "loss": config.loss.name,
        "dataset": data.dataset_name,
        "task": getattr(data.task, "name", config.data.task),
        "seed": trainer_cfg.seed,
    }
    _record_collapse_and_loss(config, data, metrics, probabilities["val"], history_rows, module.loss)
    atomic_write_json(run_dir / "metrics.json", metrics)
    plot_confusion_matrix(
        metrics["test"], run_dir / "confusion_matrix.png", title=f"Test confusion matrix ({run_dir.name})"
    )
    plot_per_class_recall({"val": metrics["val"], "test": metrics["test"]}, run_dir / "per_class_recall.png")
    write_run_json(
        run_dir,
        config,
        status="complete",
        resumed=resuming,
        seconds=time.perf_counter() - started,
        extra={"best_epoch": best_epoch, "epochs_run": len(history_rows), "failures": len(data.failures)},
    )
    return TrainResult(
        run_dir=run_dir,
        model=trained,
        metrics=metrics,
        config=config,
        resumed=resuming,
        epochs_run=len(history_rows),
        best_epoch=best_epoch,
        failures=data.failures,
    )


def _softmax(logits: np.ndarray) -> np.ndarray:
    from matcard.calibration import softmax

    return softmax(logits) if len(logits) else np.zeros_like(logits, dtype=np.float64)


def _fit_decision_layer(
    config: TrainConfig,
    run_dir: Path,
    trained: TrainedModel,
    logits: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    train_counts: np.ndarray,
) -> tuple[TrainedModel, dict[str, Any]]:
    """Fit the post-hoc decision layer (matcard.decision) into the bundle; its metrics block."""
    from matcard.bundle import load_model, set_decision
    from matcard.decision import decision_metrics, fit_for_splits

    if not config.decision.enabled:
        return trained, decision_metrics(None, logits, labels, trained.class_names, train_counts)
    layer, block = fit_for_splits(
        logits, labels, trained.class_names, train_counts,
        objective=config.decision.objective, alpha=config.decision.alpha,
    )  # fmt: skip
    for flag in block["flags"]:
        console.print(f"[yellow]decision layer:[/] {escape(flag)}")
    set_decision(run_dir / "model", layer.to_dict())
    return load_model(run_dir / "model", device="cpu"), block


def prediction_table(
    split: str,
    ids: Sequence[str],
    y: np.ndarray,
    proba: np.ndarray,
    class_names: Sequence[str],
    logits: np.ndarray | None = None,
    model: Any = None,
) -> Any:
    """``split, id, label, predicted, prob_<class>`` rows (a DataFrame) for items with labels ``y``.

    With ``logits`` (and a ``model`` with a decision layer): ``predicted_tuned`` (the layer's rule)
    and ``logit_<class>`` too, so the layer can be refitted (matcard calibrate) without the model.
    """
    import pandas as pd

    frame = pd.DataFrame(
        {
            "split": split,
            "id": [str(i) for i in ids],
            "label": [class_names[k] for k in y],
            "predicted": [class_names[k] for k in proba.argmax(axis=1)],
        }
    )
    for column, class_name in enumerate(class_names):
        frame[f"prob_{class_name}"] = proba[:, column]
    if logits is not None:
        layer = getattr(model, "decision", None)
        tuned = layer.decide(logits).predicted if layer is not None and len(logits) else logits.argmax(axis=1)
        frame["predicted_tuned"] = [class_names[k] for k in tuned]
        for column, class_name in enumerate(class_names):
            frame[f"logit_{class_name}"] = logits[:, column]
    return frame


def write_predictions(
    path: Path,
    data: PreparedData,
    probabilities: dict[str, np.ndarray],
    *,
    logits: dict[str, np.ndarray] | None = None,
    model: Any = None,
) -> None:
    """Per-item predictions of the bundle on each split (``prediction_table`` rows), atomically.

    Paired comparisons between runs (``matcard benchmark``'s bootstrap) need the items, not only the
    aggregate metrics; the labels and class order are those of ``metrics.json``.
    """
    import pandas as pd

    logits = logits or {}
    probabilities = {**{k: _softmax(v) for k, v in logits.items() if k not in probabilities}, **probabilities}
    frames = [
        prediction_table(
            name, [data.ids[i] for i in data.split[name]], data.y[data.split[name]], proba, data.class_names,
            logits=logits.get(name),
            model=model,
        )
        for name, proba in probabilities.items()
    ]
    with atomic_path(path) as tmp:
        pd.concat(frames, ignore_index=True).to_parquet(tmp, index=False)


def read_predictions(run_dir: str | Path, split: str | None = "test") -> Any:
    """The per-item predictions of a finished run (a DataFrame), of one split or (None) all."""
    import pandas as pd

    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise MatcardError(f"{path} is missing: the run did not finish (or predates per-item predictions)")
    table = pd.read_parquet(path)
    return table if split is None else table[table["split"] == split].reset_index(drop=True)


def _in_dim(data: PreparedData) -> int:
    if getattr(data.featurizer, "kind", None) in ("graph", "chgnet_graph"):
        return int(data.featurizer.node_dim)
    return int(data.graphs[0].x.shape[1])




# --------------------------------------------------------------------------------------------
# evaluate()
# --------------------------------------------------------------------------------------------
def evaluate(
    run_or_model: str | Path,
    *,
    dataset: str | None = None,
    split: str = "test",
    batch_size: int = 256,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of a trained model on a split of its run (``val`` / ``test`` / ``train``) or on
    another dataset (``split="all"``). Reproduces ``RUN/metrics.json`` for the run's own splits."""
    from matcard.bundle import load_model, resolve_bundle_dir

    bundle_dir = resolve_bundle_dir(run_or_model)
    model = load_model(bundle_dir)
    run_dir = bundle_dir.parent if (bundle_dir.parent / "config.yaml").is_file() else None
    if split not in (*SPLIT_NAMES, "all"):
        raise UsageError(f"--split must be one of train, val, test, all; got {split!r}")
    _quiet_lightning()
    if run_dir is not None:
        config = load_config(run_dir / "config.yaml")
        same_dataset = dataset is None or dataset == config.data.dataset
        if same_dataset:
            data = prepare_data(config, run_dir, write=False, resuming=True, progress=progress)
            if data.class_names != model.class_names:
                raise MatcardError(f"class names of the data {data.class_names} differ from the model's")
            if split == "all":
                graphs, y = data.graphs, data.y
            else:
                graphs, y = data.subset(split)
            metrics, decision = _evaluate_decisions(model, graphs, y, batch_size)
            return {
                "dataset": data.dataset_name,
                "split": split,
                "model": str(bundle_dir),
                "metrics": metrics,
                "decision": decision,
            }
    if dataset is None:
        raise UsageError(
            f"{run_or_model} is a model without its run directory; pass --dataset to evaluate it on"
        )
    if split != "all":
        raise UsageError(
            f"--split {split}: splits belong to the training run; use --split all for dataset {dataset!r}"
        )
    from matcard.datasets import load_dataset

    other = load_dataset(dataset, progress=progress)
    task = model.task
    labels = other.labels(task if not isinstance(task, dict) else task.get("name"))
    unknown = sorted(set(labels.class_names) - set(model.class_names))
    if unknown:
        raise UsageError(f"dataset {dataset!r} has classes the model does not know: {unknown}")
    remap = np.array([model.class_names.index(name) for name in labels.class_names], dtype=np.int64)
    y_model = remap[labels.y]
    graphs, positions, failures = featurize_for(
        other, model.featurizer, y_model, workers=1, cache=True, progress=progress
    )
    metrics, decision = _evaluate_decisions(model, graphs, y_model[positions], batch_size)
    metrics["featurization_failures"] = len(failures)
    return {
        "dataset": str(other.name), "split": "all", "model": str(bundle_dir), "metrics": metrics,
        "decision": decision,
    }  # fmt: skip


def _evaluate_decisions(
    model: TrainedModel, graphs: list[Data], y: np.ndarray, batch_size: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(argmax metrics as before, the decision block: argmax and tuned side by side, conformal...)."""
    from matcard.decision import decision_metrics, split_report

    logits = model.predict_logits_data(graphs, batch_size)
    y = np.asarray(y, dtype=np.int64)
    report = split_report(model.decision, logits, y, model.class_names, model.class_counts)
    block = decision_metrics(model.decision, {}, {}, model.class_names, model.class_counts)
    return report["argmax"], {**block, **report}


__all__ = [  # the public names, including those re-exported from the modules training was split into
    "HISTORY_COLUMNS",
    "MONITOR",
    "PREDICTIONS_FILE",
    "RESUMABLE_CHANGES",
    "SPLIT_FILE",
    "SPLIT_NAMES",
    "PreparedData",
    "TrainResult",
    "_callback_classes",
    "_lightning_module_class",
    "_optimizers",
    "_quiet_lightning",
    "_stratified_subset",
    "accelerator_is_cpu",
    "cpu_threads",
    "evaluate",
    "featurize_for",
    "global_rank_from_env",
    "prediction_table",
    "preflight",
    "prepare_data",
    "read_predictions",
    "resolve_accelerator",
    "resolve_run",
    "train",
    "training_stats",
    "write_history",
    "write_predictions",
]
