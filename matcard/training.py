"""Training on Lightning: ``train(config) -> TrainResult`` writes a complete run directory.

Run directory layout::

    RUN/config.yaml            resolved configuration (what was actually run)
    RUN/splits/                train / val / test ids (chosen before training; reused by evaluate)
    RUN/history.csv            one row per epoch (losses, validation metrics, learning rate, time)
    RUN/checkpoints/           last.ckpt (resume) and best.ckpt (best validation macro-F1)
    RUN/model/                 self-describing bundle (matcard.bundle)
    RUN/metrics.json           ``val`` and ``test`` sections (matcard.metrics), from the best checkpoint
    RUN/predictions.parquet    per-item val and test predictions (split, id, label, predicted, prob_<class>)
    RUN/confusion_matrix.png   test confusion matrix
    RUN/per_class_recall.png   per-class recall, val and test
    RUN/failures.csv           items that could not be read or featurized (only when there are any)
    RUN/run.json               status (running / complete), timings, versions, data summary

Checkpoints are selected on the validation split only; the test split is evaluated once, at the end.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matcard._version import __version__
from matcard.config import TrainConfig, config_from_any, load_config
from matcard.console import console, make_progress
from matcard.errors import ConfigError, MatcardError, UsageError
from matcard.fileio import atomic_path, atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import lightning as L
    import torch
    from torch_geometric.data import Data

    from matcard.bundle import TrainedModel

MONITOR = "val_macro_f1"
PREDICTIONS_FILE = "predictions.parquet"
HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_balanced_accuracy",
    "val_macro_f1",
    "val_top_class_fraction",
    "lr",
    "epoch_seconds",
)
# Settings that may differ when a run is resumed (they do not change what is being trained).
RESUMABLE_CHANGES = {"trainer.epochs", "trainer.devices", "trainer.accelerator", "trainer.num_workers", "out"}


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


# --------------------------------------------------------------------------------------------
# Lightning module and callbacks
# --------------------------------------------------------------------------------------------
def _lightning_module_class() -> type[L.LightningModule]:
    """Defined lazily so that importing matcard.training does not import Lightning."""
    global _MODULE_CLASS
    if _MODULE_CLASS is not None:
        return _MODULE_CLASS
    import lightning as L
    import torch
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassRecall

    class MatcardModule(L.LightningModule):
        """A model + loss pair; logs validation macro-F1 (the early-stopping monitor)."""

        def __init__(
            self, model: torch.nn.Module, loss: torch.nn.Module, config: TrainConfig, n_classes: int
        ):
            super().__init__()
            self.model = model
            self.loss = loss
            self.train_config = config
            self.val_f1 = MulticlassF1Score(n_classes, average="macro")
            self.val_recall = MulticlassRecall(n_classes, average="macro")
            self.val_accuracy = MulticlassAccuracy(n_classes, average="micro")
            self._loss_sum = torch.zeros((), dtype=torch.float64)
            self._loss_count = 0
            self._val_loss_sum = torch.zeros((), dtype=torch.float64)
            self._val_count = 0
            self.epoch_train_loss = math.nan
            self.epoch_val_loss = math.nan

        def forward(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return self.model(batch)

        def _loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            logits, embedding = self.model(batch)
            target = batch.y.view(-1)
            embeddings = embedding if getattr(self.loss, "uses_embeddings", False) else None
            return self.loss(logits, target, embeddings=embeddings), logits

        def on_train_epoch_start(self) -> None:
            self.loss.on_epoch_start(self.current_epoch, self.trainer.max_epochs)
            self._loss_sum = torch.zeros((), dtype=torch.float64)
            self._loss_count = 0

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            value, _ = self._loss(batch)
            if not torch.isfinite(value):
                raise MatcardError(
                    f"non-finite training loss ({value.item()}) at epoch {self.current_epoch}, "
                    f"batch {batch_idx}: lower optim.lr or check the loss parameters"
                )
            self._loss_sum += value.detach().double().cpu() * batch.num_graphs
            self._loss_count += batch.num_graphs
            return value

        def on_validation_epoch_start(self) -> None:
            self._val_loss_sum = torch.zeros((), dtype=torch.float64)
            self._val_count = 0

        def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            value, logits = self._loss(batch)
            target = batch.y.view(-1)
            predicted = logits.argmax(dim=1)
            self.val_f1.update(predicted, target)
            self.val_recall.update(predicted, target)
            self.val_accuracy.update(predicted, target)
            self._val_loss_sum += value.detach().double().cpu() * batch.num_graphs
            self._val_count += batch.num_graphs
            return predicted  # read by the collapse monitor

        def on_validation_epoch_end(self) -> None:
            # torchmetrics already reduced these over ranks; sync_dist averages identical values
            self.log(MONITOR, self.val_f1.compute(), sync_dist=True, logger=False)
            self.log("val_balanced_accuracy", self.val_recall.compute(), sync_dist=True, logger=False)
            self.log("val_accuracy", self.val_accuracy.compute(), sync_dist=True, logger=False)
            for metric in (self.val_f1, self.val_recall, self.val_accuracy):
                metric.reset()
            val_loss = self._reduce_mean(self._val_loss_sum, self._val_count)
            self.log("val_loss", val_loss, logger=False, sync_dist=True)
            self.epoch_val_loss = float(val_loss)
            if self._loss_count:
                self.epoch_train_loss = float(self._reduce_mean(self._loss_sum, self._loss_count))

        def _reduce_mean(self, total: torch.Tensor, count: int) -> torch.Tensor:
            pair = torch.stack([total.float(), torch.tensor(float(count))]).to(self.device)
            if self.trainer.world_size > 1:
                pair = self.trainer.strategy.reduce(pair, reduce_op="sum")
            return pair[0] / pair[1].clamp(min=1)

        def configure_optimizers(self) -> Any:
            return _optimizers(self.model.parameters(), self.train_config, self.trainer.max_epochs)

    _MODULE_CLASS = MatcardModule
    return MatcardModule


_MODULE_CLASS: Any = None


def _optimizers(parameters: Any, config: TrainConfig, max_epochs: int) -> Any:
    import torch

    optim = config.optim
    if optim.optimizer == "adamw":
        optimizer = torch.optim.AdamW(parameters, lr=optim.lr, weight_decay=optim.weight_decay)
    elif optim.optimizer == "adam":
        optimizer = torch.optim.Adam(parameters, lr=optim.lr, weight_decay=optim.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            parameters, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
        )
    warmup = optim.warmup_epochs

    def warmup_factor(epoch: int) -> float:
        return min(1.0, (epoch + 1) / (warmup + 1)) if warmup else 1.0

    if optim.schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=optim.gamma, patience=max(2, (config.trainer.patience or 10) // 3)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": MONITOR}}
    if optim.schedule == "cosine":

        def factor(epoch: int) -> float:
            progress = min(1.0, max(0.0, (epoch - warmup) / max(1, max_epochs - warmup)))
            return warmup_factor(epoch) * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    elif optim.schedule == "step":

        def factor(epoch: int) -> float:
            return warmup_factor(epoch) * optim.gamma ** (max(0, epoch - warmup) // optim.step_size)
    else:

        def factor(epoch: int) -> float:
            return warmup_factor(epoch)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def _callback_classes() -> tuple[type, type]:
    from lightning.pytorch.callbacks import Callback

    class HistoryCallback(Callback):
        """Writes history.csv after every validation; its rows live in checkpoints, so resume continues."""

        def __init__(self, path: Path, enabled: bool) -> None:
            self.path = path
            self.enabled = enabled
            self.rows: list[dict[str, Any]] = []
            self._epoch_started = time.perf_counter()

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._epoch_started = time.perf_counter()

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking:
                return
            metrics = trainer.callback_metrics
            row = {
                "epoch": trainer.current_epoch,
                "train_loss": pl_module.epoch_train_loss,
                "val_loss": pl_module.epoch_val_loss,
                "val_accuracy": float(metrics.get("val_accuracy", math.nan)),
                "val_balanced_accuracy": float(metrics.get("val_balanced_accuracy", math.nan)),
                "val_macro_f1": float(metrics.get(MONITOR, math.nan)),
                "val_top_class_fraction": float(metrics.get("val_top_class_fraction", math.nan)),
                "lr": trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else math.nan,
                "epoch_seconds": round(time.perf_counter() - self._epoch_started, 3),
            }
            self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
            if self.enabled and trainer.is_global_zero:
                write_history(self.path, self.rows)

        def state_dict(self) -> dict[str, Any]:
            return {"rows": self.rows}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            self.rows = list(state_dict.get("rows", []))

    class ProgressCallback(Callback):
        """Rich progress (matcard.console): epochs with the validation macro-F1, and batches of the epoch."""

        def __init__(self, enabled: bool) -> None:
            self.enabled = enabled
            self.progress: Any = None
            self.epochs_task: Any = None
            self.batches_task: Any = None
            self.best = -math.inf

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            if not (self.enabled and trainer.is_global_zero):
                return
            self.progress = make_progress(transient=False)
            self.progress.start()
            self.epochs_task = self.progress.add_task(
                "training", total=trainer.max_epochs, completed=trainer.current_epoch
            )
            self.batches_task = self.progress.add_task("batches", total=None)

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            if self.progress is not None:
                total = trainer.num_training_batches
                self.progress.reset(
                    self.batches_task,
                    total=total if isinstance(total, int) else None,
                    description=f"epoch {trainer.current_epoch + 1} batches",
                )

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            if self.progress is not None:
                self.progress.advance(self.batches_task)

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if self.progress is None or trainer.sanity_checking:
                return
            f1 = float(trainer.callback_metrics.get(MONITOR, math.nan))
            if f1 == f1:
                self.best = max(self.best, f1)
            self.progress.update(
                self.epochs_task,
                completed=trainer.current_epoch + 1,
                description=f"epoch {trainer.current_epoch + 1}: loss {pl_module.epoch_train_loss:.4f} "
                f"val macro-F1 {f1:.3f} (best {self.best:.3f})",
            )

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            if self.progress is not None:
                self.progress.remove_task(self.batches_task)
                self.progress.stop()
                self.progress = None

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            self.on_fit_end(trainer, pl_module)

    return HistoryCallback, ProgressCallback


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r["epoch"]):
        writer.writerow({key: row.get(key) for key in HISTORY_COLUMNS})
    atomic_write_text(path, buffer.getvalue())


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclass
class PreparedData:
    """Featurized, labelled items and their split (the same on every DDP rank)."""

    ids: list[str]
    graphs: list[Data]
    y: np.ndarray
    class_names: list[str]
    featurizer: Any
    task: Any
    split: dict[str, np.ndarray]  # "train" / "val" / "test" -> positions into ids/graphs
    failures: list[dict[str, str]]
    training_stats: dict[str, Any]
    dataset_name: str

    def subset(self, name: str) -> tuple[list[Data], np.ndarray]:
        index = self.split[name]
        return [self.graphs[i] for i in index], self.y[index]

    def class_counts(self, name: str = "train") -> np.ndarray:
        return np.bincount(self.y[self.split[name]], minlength=len(self.class_names))


def global_rank_from_env() -> int:
    """This process's rank before Lightning sets up (Lightning's launcher / torchrun / SLURM env)."""
    for variable in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    local = os.environ.get("LOCAL_RANK", "0")
    node = os.environ.get("NODE_RANK", "0")
    if local.isdigit() and node.isdigit() and (int(local) or int(node)):
        devices = int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0) or 1
        return int(node) * devices + int(local)
    return 0


# --------------------------------------------------------------------------------------------
# train()
# --------------------------------------------------------------------------------------------
def _default_out(config: TrainConfig) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    dataset = Path(config.data.dataset).stem if os.sep in config.data.dataset else config.data.dataset
    return str(Path("runs") / f"{dataset}-{config.model.name}-{config.loss.name}-{stamp}")


def _changed_fields(saved: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(saved) | set(new)):
        path = f"{prefix}{key}"
        a, b = saved.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_fields(a, b, path + ".")
        elif a != b:
            changed.append(path)
    return changed


def resolve_run(
    config: TrainConfig | dict[str, Any] | str | Path | None = None,
    *,
    resume: bool = False,
    **overrides: Any,
) -> tuple[TrainConfig, Path, bool]:
    """(config, run_dir, resuming).

    Without ``resume`` a directory that already holds a run is refused. With ``resume`` the run's
    saved config.yaml is authoritative: a config or overrides given now may only change fields in
    RESUMABLE_CHANGES (e.g. more epochs, other devices); anything else fails naming the field.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not resume:
        resolved = config_from_any(config, **overrides)
        run_dir = Path(resolved.out or _default_out(resolved))
        if (run_dir / "config.yaml").is_file() and global_rank_from_env() == 0:
            raise UsageError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        return resolved.model_copy(update={"out": str(run_dir)}), run_dir, False

    out = overrides.get("out")
    if out is None and config is not None:
        out = config_from_any(config).out
    if out is None:
        raise UsageError("--resume needs the run directory (--out RUN)")
    run_dir = Path(out)
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise UsageError(f"--resume: no run to resume at {run_dir} (config.yaml missing)")
    saved = load_config(saved_path)
    if config is not None:
        wanted = config_from_any(config, **overrides)
    else:
        wanted = load_config(base=saved.model_dump(mode="json"), overrides=overrides)
    wanted = wanted.model_copy(update={"out": saved.out})
    bad = [
        name
        for name in _changed_fields(saved.model_dump(mode="json"), wanted.model_dump(mode="json"))
        if name not in RESUMABLE_CHANGES
    ]
    if bad:
        raise ConfigError(
            f"--resume: {', '.join(bad)} differ from {saved_path}; only "
            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change when resuming"
        )
    return wanted, run_dir, True


def train(
    config: TrainConfig | dict[str, Any] | str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> TrainResult:
    """Train a classifier and write its run directory; returns a TrainResult.

    ``config`` is a TrainConfig, a nested dict, or a YAML path; keyword arguments override fields
    by CLI short name or dotted path (``epochs=5``, ``loss="magnitude"``, ``**{"optim.lr": 1e-3}``).
    With ``resume=True`` the run at ``out`` continues from ``checkpoints/last.ckpt``; a run that
    already completed is returned as it is.
    """
    started = time.perf_counter()
    config, run_dir, resuming = resolve_run(config, resume=resume, **overrides)
    is_zero = global_rank_from_env() == 0
    _quiet_lightning()
    # a finished run is returned as it is, unless it is asked for more epochs than it had
    if (
        resuming
        and _run_status(run_dir) == "complete"
        and (run_dir / "metrics.json").is_file()
        and config.trainer.epochs <= load_config(run_dir / "config.yaml").trainer.epochs
    ):
        return _completed_result(config, run_dir)

    preflight(config)  # model / loss / featurizer settings fail here, before any data work

    if is_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", config.to_yaml())
        _write_run_json(run_dir, config, status="running", resumed=resuming)

    data = prepare_data(config, run_dir, write=is_zero, resuming=resuming, progress=progress and is_zero)
    return _fit_and_finish(config, run_dir, data, resuming, started, progress, is_zero)


def _run_status(run_dir: Path) -> str | None:
    import json

    try:
        return json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError):
        return None


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

    kind = config.featurizer_kind()
    try:
        featurizer_from_config({"kind": kind, **config.featurizer.params})
    except MatcardError:
        raise
    except Exception as error:
        raise ConfigError(f"featurizer.params: {error}") from error
    build_model(config.model.name, 4, 2, **_model_params(config))
    try:
        losses.build(config.loss.name, [10, 10], **config.loss.params)
    except ConfigError as error:
        raise ConfigError(f"loss: {error}") from error


def _model_params(config: TrainConfig) -> dict[str, Any]:
    """Model parameters, with the distance-expansion cutoff tied to the featurizer's by default."""
    from matcard.models import model_param_names

    params = dict(config.model.params)
    if "cutoff" in model_param_names(config.model.name) and "cutoff" not in params:
        params["cutoff"] = float(config.featurizer.params.get("cutoff", 8.0))
    return params


SAMPLERS = ("none", "class_balanced", "under")


def _train_loader_and_graphs(config: TrainConfig, data: PreparedData) -> tuple[Any, list[Data]]:
    """Training DataLoader with the configured sampler, or resampled descriptors (imbalanced-learn)."""
    import torch
    from torch_geometric.loader import DataLoader

    from matcard import losses

    graphs, y = data.subset("train")
    name = config.sampler.name.strip().lower().replace("-", "_")
    params = dict(config.sampler.params)
    sampler = None
    if name in ("class_balanced", "balanced"):
        sampler = losses.ClassBalancedSampler(y, seed=config.trainer.seed, **params)
    elif name in ("under", "undersample", "random_under_sampler"):
        sampler = losses.UnderSampler(y, seed=config.trainer.seed, **params)
    elif name in losses.RESAMPLERS:
        if config.featurizer_kind() != "composition":
            raise ConfigError(
                f"sampler.name: {name!r} interpolates descriptor vectors and needs composition features; "
                "for crystal graphs use class_balanced or under"
            )
        features = torch.cat([g.x for g in graphs]).numpy()
        x_res, y_res = losses.resample(features, y, name, random_state=config.trainer.seed, **params)
        from torch_geometric.data import Data as PygData

        graphs = [
            PygData(x=torch.as_tensor(row, dtype=torch.float32).view(1, -1), y=torch.tensor([int(label)]))
            for row, label in zip(x_res, y_res, strict=True)
        ]
    elif name != "none":
        raise ConfigError(
            f"sampler.name: unknown sampler {config.sampler.name!r}; choose one of "
            f"{[*SAMPLERS, *sorted(losses.RESAMPLERS)]}"
        )
    loader = DataLoader(
        graphs,
        batch_size=config.trainer.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=config.trainer.num_workers,
        persistent_workers=config.trainer.num_workers > 0,
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
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from torch_geometric.loader import DataLoader

    from matcard import collapse, losses
    from matcard.bundle import load_model, save_bundle
    from matcard.models import build_model

    trainer_cfg = config.trainer
    # Denormal floats (tiny gradients behind CGConv's sigmoid gates) made CPU matmuls ~10x slower
    # in measurements on CGCNN batches (bwd 0.21 s -> 0.02 s for 32 graphs); flushing them is harmless.
    torch.set_flush_denormal(True)
    if accelerator_is_cpu(trainer_cfg.accelerator):
        torch.set_num_threads(cpu_threads(trainer_cfg.threads, trainer_cfg.devices))
    L.seed_everything(trainer_cfg.seed, workers=True, verbose=False)
    n_classes = len(data.class_names)
    train_counts = data.class_counts("train")
    in_dim = _in_dim(data)
    model_params = _model_params(config)
    model = build_model(config.model.name, in_dim, n_classes, **model_params)
    train_loader, _ = _train_loader_and_graphs(config, data)
    if hasattr(model, "fit_input_scaling"):
        model.fit_input_scaling(torch.cat([g.x for g in data.subset("train")[0]]))
    loss = losses.build(config.loss.name, train_counts, **config.loss.params)
    module = _lightning_module_class()(model, loss, config, n_classes)
    val_graphs, _ = data.subset("val")
    val_loader = DataLoader(val_graphs, batch_size=trainer_cfg.eval_batch_size, shuffle=False)

    accelerator = resolve_accelerator(trainer_cfg.accelerator)
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
    checkpoint_dir = run_dir / "checkpoints"
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best",
        monitor=MONITOR,
        mode="max",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    history_cls, progress_cls = _callback_classes()
    callbacks: list[Any] = [
        history_cls(run_dir / "history.csv", enabled=is_zero),
        progress_cls(progress),
        checkpoint,
        collapse.monitor_callback(),
    ]
    if trainer_cfg.patience is not None:
        callbacks.append(
            EarlyStopping(monitor=MONITOR, mode="max", patience=trainer_cfg.patience, check_finite=False)
        )
    trainer = L.Trainer(
        max_epochs=trainer_cfg.epochs,
        accelerator=accelerator,
        devices=trainer_cfg.devices,
        num_nodes=trainer_cfg.num_nodes,
        strategy=strategy,
        precision=trainer_cfg.precision,
        # CUDA scatter kernels have no deterministic implementation: warn there instead of failing.
        deterministic=trainer_cfg.deterministic
        if accelerator == "cpu"
        else ("warn" if trainer_cfg.deterministic else False),
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=config.optim.grad_clip,
        num_sanity_val_steps=0,
        default_root_dir=str(run_dir),
        log_every_n_steps=max(1, len(train_loader)),
    )
    last = checkpoint_dir / "last.ckpt"
    ckpt_path = str(last) if resuming and last.is_file() else None
    if resuming and ckpt_path is None and is_zero:
        console.print(f"[yellow]no checkpoint in {checkpoint_dir}; training {run_dir} from the start[/]")
    resume_hint = f"continue with: matcard train --out {run_dir} --resume"
    try:
        trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path)
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
    if not trainer.is_global_zero:
        return TrainResult(run_dir, None, config=config, is_global_zero=False)

    # Restore the best checkpoint (validation macro-F1) into a fresh model and bundle it.
    best_path = checkpoint.best_model_path
    best_epoch = None
    if best_path and Path(best_path).is_file():
        state = torch.load(best_path, map_location="cpu", weights_only=False)
        best_epoch = int(state.get("epoch", -1))
        weights = {k[len("model.") :]: v for k, v in state["state_dict"].items() if k.startswith("model.")}
        model = build_model(config.model.name, in_dim, n_classes, **model_params)
        model.load_state_dict(weights)
    else:
        model = module.model.cpu()
    history_rows = callbacks[0].rows
    save_bundle(
        run_dir / "model",
        model,
        model_name=config.model.name,
        model_params=model_params,
        in_dim=in_dim,
        featurizer_config=data.featurizer.config.model_dump(mode="json"),
        class_names=data.class_names,
        class_counts=train_counts.tolist(),
        task=data.task,
        training_stats=data.training_stats,
        provenance={
            "dataset": data.dataset_name,
            "task": getattr(data.task, "name", config.data.task),
            "loss": config.loss.model_dump(mode="json"),
            "sampler": config.sampler.model_dump(mode="json"),
            "seed": trainer_cfg.seed,
            "best_epoch": best_epoch,
            "run_dir": str(run_dir.resolve()),
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    trained = load_model(run_dir / "model", device="cpu")
    from matcard.metrics import classification_metrics

    metrics: dict[str, Any] = {}
    probabilities: dict[str, np.ndarray] = {}
    for name in ("val", "test"):
        graphs, y = data.subset(name)
        probabilities[name] = trained.predict_proba_data(graphs, batch_size=trainer_cfg.eval_batch_size)
        metrics[name] = classification_metrics(y, probabilities[name], trained.class_names)
    write_predictions(run_dir / PREDICTIONS_FILE, data, probabilities)
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
    verdict = collapse.assess(
        probabilities["val"].argmax(axis=1),
        data.subset("val")[1],
        data.class_names,
        [row.get("val_top_class_fraction", math.nan) for row in history_rows],
    )
    metrics.update(collapsed=verdict.collapsed, collapse=verdict.to_dict())
    metrics["loss"] = collapse.loss_record(config.loss.name, config.loss.params, module.loss)
    if verdict.collapsed:
        console.print(f"[yellow]warning: {collapse.warning_text(verdict, config.loss.name)}[/]")
    atomic_write_json(run_dir / "metrics.json", metrics)
    from matcard.metrics import plot_confusion_matrix, plot_per_class_recall

    plot_confusion_matrix(
        metrics["test"], run_dir / "confusion_matrix.png", title=f"Test confusion matrix ({run_dir.name})"
    )
    plot_per_class_recall({"val": metrics["val"], "test": metrics["test"]}, run_dir / "per_class_recall.png")
    _write_run_json(
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


def prediction_table(
    split: str, ids: Sequence[str], y: np.ndarray, proba: np.ndarray, class_names: Sequence[str]
) -> Any:
    """``split, id, label, predicted, prob_<class>`` rows (a DataFrame) for items with labels ``y``."""
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
    return frame


def write_predictions(path: Path, data: PreparedData, probabilities: dict[str, np.ndarray]) -> None:
    """Per-item predictions of the bundle on each split (``prediction_table`` rows), atomically.

    Paired comparisons between runs (``matcard benchmark``'s bootstrap) need the items, not only the
    aggregate metrics; the labels and class order are those of ``metrics.json``.
    """
    import pandas as pd

    frames = [
        prediction_table(
            name, [data.ids[i] for i in data.split[name]], data.y[data.split[name]], proba, data.class_names
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
    if getattr(data.featurizer, "kind", None) == "graph":
        return int(data.featurizer.node_dim)
    return int(data.graphs[0].x.shape[1])


def _write_run_json(
    run_dir: Path,
    config: TrainConfig,
    status: str,
    resumed: bool,
    seconds: float | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    import platform

    info = {
        "status": status,
        "matcard_version": __version__,
        "python": platform.python_version(),
        "resumed": resumed,
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": None if seconds is None else round(seconds, 2),
        "dataset": config.data.dataset,
        "model": config.model.name,
        "loss": config.loss.name,
        **(extra or {}),
    }
    atomic_write_json(run_dir / "run.json", info)


# --------------------------------------------------------------------------------------------
# Data preparation: dataset -> labels -> features -> split (identical on every DDP rank)
# --------------------------------------------------------------------------------------------
SPLIT_FILE = "splits/split.json"


def featurize_for(
    dataset: Any, featurizer: Any, labels: np.ndarray, *, workers: int, cache: bool, progress: bool
) -> tuple[list[Data], np.ndarray, list[dict[str, str]]]:
    """(graphs with y, their dataset positions, failures) through matcard.featurize's cached store."""
    import tempfile

    from matcard.featurize import featurize_dataset

    with tempfile.TemporaryDirectory(prefix="matcard-features-") as scratch:
        report = featurize_dataset(
            dataset,
            featurizer,
            jobs=workers,
            progress=progress,
            out=None if cache else Path(scratch) / "store",
        )
        positions = report.store.positions()
        graphs = report.store.load(labels)
    failures = [{"id": f.id, "stage": "featurize", "reason": f.reason} for f in report.failures]
    return graphs, np.asarray(positions, dtype=np.int64), failures


def training_stats(dataset: Any, positions: np.ndarray) -> dict[str, Any]:
    """What the model saw in training (screening flags inputs outside it): elements with counts,
    ranges of atoms per cell and volume per atom."""
    from collections import Counter

    elements: Counter[str] = Counter()
    stats: dict[str, Any] = {"n_train": len(positions)}
    store = getattr(dataset, "store", None)
    if store is not None and hasattr(store, "offsets"):
        offsets = np.asarray(store.offsets)
        n_atoms = (offsets[positions + 1] - offsets[positions]).astype(np.int64)
        volumes = np.abs(np.linalg.det(np.asarray(store.lattices)[positions]))
        for p in positions.tolist():
            for species in store.species[int(offsets[p]) : int(offsets[p + 1])]:
                if species.startswith("{"):  # disordered site: {"Fe": 0.5, ...}
                    import json

                    elements.update(json.loads(species))
                else:
                    elements[species] += 1
        stats["n_atoms"] = {"min": int(n_atoms.min()), "max": int(n_atoms.max())}
        per_atom = volumes / np.maximum(n_atoms, 1)
        stats["volume_per_atom"] = {"min": float(per_atom.min()), "max": float(per_atom.max())}
    elif getattr(dataset, "kind", "") == "structures":
        structures = [dataset.structure(int(p)) for p in positions]
        for structure in structures:
            elements.update(str(el) for el in structure.composition.elements)
        n_atoms_list = [len(s) for s in structures]
        per_atom_list = [s.volume / len(s) for s in structures]
        stats["n_atoms"] = {"min": min(n_atoms_list), "max": max(n_atoms_list)}
        stats["volume_per_atom"] = {"min": float(min(per_atom_list)), "max": float(max(per_atom_list))}
    else:
        compositions = dataset.compositions()
        for p in positions.tolist():
            elements.update(str(el) for el in compositions[p].elements)
    # element symbols only (a disordered site's species may carry oxidation states)
    stats["elements"] = dict(sorted(Counter({_element_symbol(k): v for k, v in elements.items()}).items()))
    return stats


def _element_symbol(species: str) -> str:
    import re

    match = re.match(r"[A-Z][a-z]?", species)
    return match.group(0) if match else species


def prepare_data(
    config: TrainConfig,
    run_dir: Path | None,
    *,
    write: bool = True,
    resuming: bool = False,
    progress: bool = True,
) -> PreparedData:
    """Load, label, featurize and split; the split is saved in ``run_dir/splits`` (or reused)."""
    from matcard.datasets import load_dataset
    from matcard.featurize import featurizer_from_config

    data_cfg = config.data
    kind = config.featurizer_kind()
    dataset = load_dataset(data_cfg.dataset, mirror=data_cfg.mirror, progress=progress)
    if kind == "graph" and dataset.kind != "structures":
        raise ConfigError(
            f"model.name: {config.model.name!r} needs crystal structures, but dataset {dataset.name!r} "
            "holds compositions only; use model.name=mlp"
        )
    task = dataset.task(data_cfg.task)
    labels = dataset.labels(task)
    featurizer = featurizer_from_config({"kind": kind, **config.featurizer.params})
    graphs, positions, failures = featurize_for(
        dataset,
        featurizer,
        labels.y,
        workers=config.featurizer.workers,
        cache=config.featurizer.cache,
        progress=progress,
    )
    failures = [
        {"id": str(getattr(f, "source", "")), "stage": "read", "reason": str(getattr(f, "reason", f))}
        for f in dataset.failures
    ] + failures
    if not graphs:
        raise MatcardError(f"no item of {dataset.name!r} could be featurized; first failures: {failures[:3]}")
    all_ids = dataset.ids
    ids = [all_ids[p] for p in positions]
    y = labels.y[positions]
    split = _make_or_load_split(config, run_dir, dataset, ids, y, positions, write=write, resuming=resuming)
    if write and run_dir is not None and failures:
        _write_failures(run_dir / "failures.csv", failures)
    return PreparedData(
        ids=ids,
        graphs=graphs,
        y=y,
        class_names=list(labels.class_names),
        featurizer=featurizer,
        task=task,
        split=split,
        failures=failures,
        training_stats=training_stats(dataset, positions[split["train"]]),
        dataset_name=str(dataset.name),
    )


def _write_failures(path: Path, failures: list[dict[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["id", "stage", "reason"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(failures)
    atomic_write_text(path, buffer.getvalue())


SPLIT_NAMES = ("train", "val", "test")


def _make_or_load_split(
    config: TrainConfig,
    run_dir: Path | None,
    dataset: Any,
    ids: list[str],
    y: np.ndarray,
    positions: np.ndarray,
    *,
    write: bool,
    resuming: bool,
) -> dict[str, np.ndarray]:
    """Stratified train/val/test positions into ``ids`` (chosen before training, with the seed).

    Saved as a matcard.splits index file (with the ids and the dataset's content hash), so resume and
    evaluate use exactly the same items; a changed dataset is detected instead of silently mixed.
    """
    from matcard import splits

    path = None if run_dir is None else run_dir / SPLIT_FILE
    if path is not None and path.is_file() and (resuming or not write):
        saved = splits.Split.load(path, ids=ids, content_hash=str(dataset.content_hash))
        return {name: saved.parts[name] for name in SPLIT_NAMES}
    data_cfg = config.data
    subset = np.arange(len(ids))
    if data_cfg.limit is not None and data_cfg.limit < len(ids):
        subset = _stratified_subset(y, data_cfg.limit, config.trainer.seed)
    groups = None
    if data_cfg.group_by_formula:
        if "reduced_formula" in dataset.table.columns:
            formulas = dataset.table["reduced_formula"].astype(str).to_numpy()
        else:
            formulas = np.asarray(splits.reduced_formula_groups(dataset.compositions()), dtype=object)
        groups = formulas[positions[subset]].tolist()
    fractions = (
        1.0 - data_cfg.val_fraction - data_cfg.test_fraction,
        data_cfg.val_fraction,
        data_cfg.test_fraction,
    )
    if data_cfg.split == "given":
        parts, meta = _given_split(config, dataset, y, positions, subset, groups)
    else:
        split = splits.stratified_split(
            y[subset], fractions=fractions, seed=config.trainer.seed, groups=groups
        )
        parts, meta = {name: subset[split.parts[name]] for name in SPLIT_NAMES}, split.meta
    for name in ("train", "val"):
        if len(parts[name]) == 0:
            raise MatcardError(
                f"the {name} split is empty: {len(subset)} items are too few for these split fractions"
            )
    if write and path is not None:
        saved = splits.Split(
            parts["train"],
            parts["val"],
            parts["test"],
            meta={
                **meta,
                "dataset": str(dataset.name),
                "content_hash": str(dataset.content_hash),
                "task": getattr(dataset.task(config.data.task), "name", config.data.task),
                "limit": data_cfg.limit,
            },
        )
        saved.save(path, ids=ids)
    return parts


def _stratified_subset(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Exactly ``size`` positions, each class keeping its share (up to rounding), sorted."""
    from matcard import splits

    fraction = size / len(y)
    chosen = splits.stratified_split(y, fractions=(fraction, 1.0 - fraction, 0.0), seed=seed).train
    rng = np.random.default_rng(seed)
    if len(chosen) > size:  # per-class rounding overshot: drop a few at random
        chosen = rng.choice(chosen, size=size, replace=False)
    elif len(chosen) < size:  # or undershot: add a few of the rest at random
        rest = np.setdiff1d(np.arange(len(y)), chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, size=size - len(chosen), replace=False)])
    return np.sort(chosen)


def _given_split(
    config: TrainConfig,
    dataset: Any,
    y: np.ndarray,
    positions: np.ndarray,
    subset: np.ndarray,
    groups: list[str] | None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Test = the dataset's published held-out part; val carved (stratified) from the rest."""
    from matcard import splits

    given = dataset.given_splits()
    held_out_name = next((name for name in ("test", "validation", "val") if name in given), None)
    if held_out_name is None:
        raise ConfigError(
            f"data.split: dataset {dataset.name!r} publishes no split (given: {sorted(given) or 'none'}); "
            "use data.split=stratified"
        )
    held_out = np.isin(positions[subset], given[held_out_name])
    rest = subset[~held_out]
    val_share = config.data.val_fraction / (1.0 - config.data.test_fraction)
    rest_groups = None if groups is None else [g for g, h in zip(groups, held_out, strict=True) if not h]
    inner = splits.stratified_split(
        y[rest], fractions=(1.0 - val_share, val_share, 0.0), seed=config.trainer.seed, groups=rest_groups
    )
    parts = {"train": rest[inner.train], "val": rest[inner.val], "test": subset[held_out]}
    return parts, {"kind": "given", "test_part": held_out_name, "seed": config.trainer.seed}


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
            metrics = model.evaluate_data(graphs, y, batch_size=batch_size)
            return {
                "dataset": data.dataset_name,
                "split": split,
                "model": str(bundle_dir),
                "metrics": metrics,
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
    metrics = model.evaluate_data(graphs, y_model[positions], batch_size=batch_size)
    metrics["featurization_failures"] = len(failures)
    return {"dataset": str(other.name), "split": "all", "model": str(bundle_dir), "metrics": metrics}
