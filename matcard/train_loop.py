"""The Lightning pieces of training: the model + loss module, the optimiser / schedule, the
history and progress callbacks, and the two checkpoint callbacks (last every epoch, best on
validation macro-F1). Lightning is imported lazily, inside the factories."""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matcard.checkpoints import STATE_KEY, restore_resume_state, resume_state
from matcard.config import TrainConfig
from matcard.console import make_progress
from matcard.errors import MatcardError
from matcard.fileio import atomic_write_text

if TYPE_CHECKING:
    import lightning as L

MONITOR = "val_macro_f1"
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
            self,
            model: torch.nn.Module,
            loss: torch.nn.Module,
            config: TrainConfig,
            n_classes: int,
            sampler: Any = None,
        ):
            super().__init__()
            self.model = model
            self.loss = loss
            self.train_config = config
            self.train_sampler = sampler  # its epoch counter is part of the resume state
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
            # fine-tuned pretrained models give their layers a lower learning rate than the head
            groups = getattr(self.model, "param_groups", None)
            parameters = groups(self.train_config.optim.lr) if callable(groups) else self.model.parameters()
            return _optimizers(parameters, self.train_config, self.trainer.max_epochs)

        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            # RNG states as they are now: the next epoch's shuffle / sampling / dropout draw from them
            checkpoint[STATE_KEY] = resume_state(self.loss, self.train_sampler)

        def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            if STATE_KEY in checkpoint:
                restore_resume_state(checkpoint[STATE_KEY], self.loss, self.train_sampler)

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
        """Writes history.csv after every validation; its rows live in checkpoints, so a resumed run
        keeps exactly the rows of the epochs it resumes after (one row per epoch)."""

        def __init__(self, path: Path, enabled: bool) -> None:
            self.path = path
            self.enabled = enabled
            self.rows: list[dict[str, Any]] = []
            self._epoch_started = time.perf_counter()

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            # resumed: the file may hold an epoch newer than the checkpoint; it will be trained again
            if self.rows and self.enabled and trainer.is_global_zero:
                write_history(self.path, self.rows)

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



def checkpoint_callbacks(checkpoint_dir: Path) -> tuple[Any, Any]:
    """(best, last): ``best.ckpt`` when validation macro-F1 improves, ``last.ckpt`` after every epoch.

    Two callbacks because one ModelCheckpoint with a monitor writes ``last`` only in epochs where it
    also wrote the best one, so a killed run lost every epoch since its last improvement. ``last`` is
    listed after ``best`` so that its checkpoint holds the best-score state of the same epoch.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    best = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best",
        monitor=MONITOR,
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
    )
    last = ModelCheckpoint(
        dirpath=checkpoint_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )
    return best, last
