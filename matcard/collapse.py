"""Collapse guard: did training end in (or sit on) a constant predictor?

Losses built on the value of an error-set invariant can prefer predicting one class for every item
(methods brief §9). A run is flagged when the selected checkpoint's validation predictions put at
least ``threshold`` of the items in one class while the validation labels hold at least two classes,
or when the per-epoch validation top-class fraction stayed at or above ``threshold`` for the last
``patience`` epochs of training (it ended on a constant predictor). A phase of one-class predictions
that the run recovered from is not a collapse: with 4 % positives, plain CE predicts only the majority
for its first epochs. Training writes the verdict into ``metrics.json`` (``collapsed`` + ``collapse``)
together with what the trained loss did (``loss``: name, params, realised class weights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

THRESHOLD = 0.99
PATIENCE = 5  # consecutive epochs at or above the threshold
HISTORY_COLUMN = "val_top_class_fraction"


@dataclass
class CollapseReport:
    collapsed: bool
    fraction: float | None  # top-class fraction of the selected checkpoint's validation predictions
    top_class: str | None
    selected_collapsed: bool  # the selected checkpoint predicts one class
    epochs: int  # consecutive epochs at or above the threshold at the end of training
    epochs_flagged: bool  # that run reached ``patience``
    threshold: float = THRESHOLD
    patience: int = PATIENCE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def top_class_fraction(predicted: Sequence[int] | np.ndarray, n_classes: int) -> tuple[float, int]:
    """(fraction of the items predicted as the most predicted class, that class)."""
    predicted = np.asarray(predicted, dtype=np.int64).reshape(-1)
    if predicted.size == 0:
        return math.nan, -1
    counts = np.bincount(predicted, minlength=n_classes)
    top = int(np.argmax(counts))
    return float(counts[top] / predicted.size), top


def trailing_run(fractions: Sequence[float], threshold: float = THRESHOLD) -> int:
    """Number of consecutive values >= threshold at the end of ``fractions`` (NaN breaks a run)."""
    run = 0
    for value in reversed(list(fractions)):
        if value is None or not value >= threshold:
            break
        run += 1
    return run


def assess(
    predicted: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    epoch_fractions: Sequence[float] = (),
    *,
    threshold: float = THRESHOLD,
    patience: int = PATIENCE,
) -> CollapseReport:
    """The verdict for one run; never collapsed when the labels hold fewer than two classes."""
    fraction, top = top_class_fraction(predicted, len(class_names))
    several = np.unique(np.asarray(labels)).size >= 2
    epochs = trailing_run(epoch_fractions, threshold)
    selected = bool(several and math.isfinite(fraction) and fraction >= threshold)
    flagged = bool(several and epochs >= patience)
    return CollapseReport(
        collapsed=selected or flagged,
        fraction=None if not math.isfinite(fraction) else round(fraction, 6),
        top_class=class_names[top] if top >= 0 else None,
        selected_collapsed=selected,
        epochs=epochs,
        epochs_flagged=flagged,
        threshold=threshold,
        patience=patience,
    )


def warning_text(report: CollapseReport, loss_name: str) -> str:
    """One line for the console and the ``matcard train`` summary."""
    share = f"{report.fraction:.1%}" if report.fraction is not None else "n/a"
    if report.selected_collapsed:
        return (
            f"loss {loss_name!r} collapsed to a constant predictor: {share} of the validation items are "
            f"predicted {report.top_class!r}; its metrics describe a model that ignores its input"
        )
    return (
        f"loss {loss_name!r} collapsed to a constant predictor for the last {report.epochs} epoch(s) "
        f"(>= {report.threshold:.0%} of the validation items in one class); the selected checkpoint "
        f"predates the collapse ({share} in its top class {report.top_class!r})"
    )


def realised_class_weights(loss: Any) -> list[float] | None:
    """The loss's realised class weights (``realised_class_weights()``), or None when it has none."""
    method = getattr(loss, "realised_class_weights", None)
    if not callable(method):
        return None
    weights = method()
    if weights is None:
        return None
    if hasattr(weights, "detach"):
        weights = weights.detach().cpu().tolist()
    return [float(w) for w in weights]


def loss_record(name: str, params: dict[str, Any], loss: Any) -> dict[str, Any]:
    """``metrics.json["loss"]``: the trained loss's name, parameters and realised class weights."""
    return {"name": name, "params": dict(params), "realised_class_weights": realised_class_weights(loss)}


def monitor_callback() -> Any:
    """A Lightning callback that logs ``val_top_class_fraction`` at the end of every validation.

    It reads the predicted classes that the module's ``validation_step`` returns."""
    import torch
    from lightning.pytorch.callbacks import Callback

    class TopClassMonitor(Callback):
        def __init__(self) -> None:
            self.counts: torch.Tensor | None = None

        def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.counts = None

        def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any) -> None:
            if not isinstance(outputs, torch.Tensor):
                return
            n_classes = int(getattr(getattr(pl_module, "val_f1", None), "num_classes", 0) or 0)
            counts = torch.bincount(outputs.detach().reshape(-1).long(), minlength=n_classes)
            if self.counts is not None and self.counts.numel() != counts.numel():
                size = max(self.counts.numel(), counts.numel())
                counts = torch.nn.functional.pad(counts, (0, size - counts.numel()))
                self.counts = torch.nn.functional.pad(self.counts, (0, size - self.counts.numel()))
            self.counts = counts if self.counts is None else self.counts + counts

        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking or self.counts is None:
                return
            counts = self.counts.float()
            if trainer.world_size > 1:  # every rank saw its own share of the validation items
                counts = trainer.strategy.reduce(counts, reduce_op="sum")
            fraction = counts.max() / counts.sum().clamp(min=1)
            pl_module.log(HISTORY_COLUMN, fraction, logger=False)

    return TopClassMonitor()
