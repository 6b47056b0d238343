"""The one interface every matcard loss implements, the registry, and class-weight helpers.

Contract (docs/architecture.md):

    loss = matcard.losses.build(name, class_counts, **params)    # a torch.nn.Module
    value = loss(logits, target, embeddings=None)                 # scalar tensor
    loss.on_epoch_start(epoch, max_epochs)                        # schedules (LDAM-DRW...)
    loss.uses_embeddings                                          # pass pooled embeddings when True
    loss.realised_class_weights()                                 # class weights it applies, or None

``realised_class_weights`` lets a study build a count-matched control (fixed class weights at
the same ratio): fixed-weight losses return their weights, per-sample reweighting losses the
running mean per-sample weight of each class over training batches, others None.

Construction is cheap and all state lives in registered buffers, so a loss moves with
``.to(device)`` and is saved in a Lightning checkpoint together with its module.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import torch
from torch import nn

from matcard.errors import ConfigError, UsageError
from matcard.names import LOSS_ALIASES as _ALIASES

WeightScheme = Literal["inverse", "inverse_sqrt", "median", "class_balanced", "none"]

LOSSES: dict[str, type[ImbalanceLoss]] = {}
_LossT = TypeVar("_LossT", bound="type[ImbalanceLoss]")


def register(name: str) -> Callable[[_LossT], _LossT]:
    """Class decorator adding a loss to :data:`LOSSES` under ``name``."""

    def decorator(cls: _LossT) -> _LossT:
        if name in LOSSES:
            raise RuntimeError(f"loss {name!r} registered twice")
        cls.name = name
        LOSSES[name] = cls
        return cls

    return decorator


def as_class_counts(class_counts: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Validate training class counts: 1-D, at least two classes, non-negative, some positive."""
    counts = torch.as_tensor(
        class_counts.detach().cpu().numpy() if isinstance(class_counts, torch.Tensor) else class_counts,
        dtype=torch.float64,
    )
    if counts.dim() != 1 or counts.numel() < 2:
        raise ConfigError(
            f"class_counts must be a 1-D sequence with at least two classes, got {class_counts!r}"
        )
    if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()) or float(counts.sum()) <= 0:
        raise ConfigError(f"class_counts must be non-negative with a positive total, got {counts.tolist()}")
    return counts


def class_weights(
    class_counts: Sequence[int] | np.ndarray | torch.Tensor,
    scheme: WeightScheme = "inverse",
    beta: float = 0.9999,
) -> torch.Tensor:
    """Per-class weights (float64) from training counts (methods brief §3).

    - ``inverse``: N / (C n_c)                  (mean over samples is 1)
    - ``inverse_sqrt``: 1 / sqrt(n_c), rescaled to mean 1 over classes
    - ``median``: median(n) / n_c               (median-frequency balancing)
    - ``class_balanced``: (1 - beta) / (1 - beta^n_c), normalised to sum to C (Cui 2019)
    - ``none``: ones

    A class with no training examples is treated as having one (finite weight, the largest).
    """
    counts = as_class_counts(class_counts).clamp_min(1.0)
    n_classes = counts.numel()
    if scheme == "inverse":
        return counts.sum() / (n_classes * counts)
    if scheme == "inverse_sqrt":
        weights = counts.rsqrt()
        return weights * n_classes / weights.sum()
    if scheme == "median":
        return counts.median() / counts
    if scheme == "class_balanced":
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"beta must lie in [0, 1), got {beta}")
        effective = (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts)) / (1.0 - beta)
        weights = 1.0 / effective
        return weights * n_classes / weights.sum()
    if scheme == "none":
        return torch.ones(n_classes, dtype=torch.float64)
    raise ConfigError(
        f"unknown weight scheme {scheme!r}; choose inverse, inverse_sqrt, median, class_balanced or none"
    )


def normalise_weights(weights: torch.Tensor, max_weight: float = 10.0) -> torch.Tensor:
    """Clip at 0, rescale to mean 1, cap at ``max_weight`` and redistribute (water-filling); float64.

    Degenerate input (no positive finite weight) gives ones. ``max_weight`` must be >= 1.
    """
    w = weights.detach().to(torch.float64).clone()
    w = torch.where(torch.isfinite(w), w, torch.zeros_like(w)).clamp_min_(0.0)
    n = w.numel()
    if n == 0 or float(w.sum()) <= 0:
        return torch.ones_like(w)
    w.mul_(n / w.sum())
    capped = torch.zeros(n, dtype=torch.bool, device=w.device)
    for _ in range(n):  # each pass caps at least one more weight, or stops
        over = (w > max_weight) & ~capped
        if not bool(over.any()):
            break
        capped |= over
        w[capped] = max_weight
        free = ~capped
        free_total = float(w[free].sum())
        if free_total <= 0:
            break
        w[free] *= (n - max_weight * int(capped.sum())) / free_total
    return w


class ImbalanceLoss(nn.Module):
    """Base class: holds the training class counts and checks the call's inputs.

    Subclasses implement :meth:`compute` on validated ``logits`` [B, C] and ``target`` [B] (int64).
    """

    name: ClassVar[str] = "base"
    uses_embeddings: bool = False

    class_counts: torch.Tensor
    class_prior: torch.Tensor

    def __init__(self, class_counts: Sequence[int] | np.ndarray | torch.Tensor) -> None:
        super().__init__()
        counts = as_class_counts(class_counts)
        self.n_classes = int(counts.numel())
        self.register_buffer("class_counts", counts.to(torch.float32))
        prior = counts.clamp_min(1.0) / counts.clamp_min(1.0).sum()
        self.register_buffer("class_prior", prior.to(torch.float32))

    def on_epoch_start(self, epoch: int, max_epochs: int) -> None:
        """Hook called by the training loop at the start of every epoch (0-based). No-op by default."""

    def realised_class_weights(self) -> list[float] | None:
        """Class weights this loss applies (raw, not normalised); None when it applies none."""
        return None

    # -- running per-class mean of per-sample weights (for reweighting losses) -------------------
    def _init_weight_tracking(self) -> None:
        """Register the buffers behind :meth:`_tracked_class_weights` (call in ``__init__``)."""
        self.register_buffer("weight_sum", torch.zeros(self.n_classes, dtype=torch.float64))
        self.register_buffer("weight_count", torch.zeros(self.n_classes, dtype=torch.float64))

    def _track_weights(self, weights: torch.Tensor, target: torch.Tensor) -> None:
        """Fold a training batch's per-sample weights into the per-class running sums."""
        if not (self.training and torch.is_grad_enabled()):
            return  # validation batches do not count
        with torch.no_grad():
            sums, index = self.weight_sum, target.to(self.weight_sum.device)
            sums.index_add_(0, index, weights.detach().to(sums))
            self.weight_count.index_add_(0, index, torch.ones_like(index, dtype=sums.dtype))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # checkpoints written before weight tracking existed lack its buffers: start them at zero
        for name in ("weight_sum", "weight_count"):
            if hasattr(self, name) and prefix + name not in state_dict:
                state_dict[prefix + name] = torch.zeros_like(getattr(self, name))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _tracked_class_weights(self) -> list[float] | None:
        """Mean per-sample weight of each class so far (NaN for a class not yet seen); None before any."""
        counts = self.weight_count
        if float(counts.sum()) == 0:
            return None
        means = torch.where(counts > 0, self.weight_sum / counts.clamp_min(1.0), float("nan"))
        return [float(v) for v in means.cpu()]

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        logits, target = self._check_inputs(logits, target)
        return self.compute(logits, target, embeddings)

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        raise NotImplementedError

    def _check_inputs(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if logits.dim() != 2 or logits.shape[1] != self.n_classes:
            raise UsageError(
                f"{self.name}: logits must have shape [batch, {self.n_classes}], got {tuple(logits.shape)}"
            )
        target = target.reshape(-1).long()
        if target.shape[0] != logits.shape[0]:
            raise UsageError(f"{self.name}: {logits.shape[0]} logits rows but {target.shape[0]} targets")
        if logits.shape[0] == 0:
            raise UsageError(f"{self.name}: empty batch")
        return logits, target

    def extra_repr(self) -> str:
        return f"n_classes={self.n_classes}"


def build(name: str, class_counts: Sequence[int] | np.ndarray | torch.Tensor, **params: Any) -> ImbalanceLoss:
    """Build a registered loss by name; unknown names and parameters fail fast naming the field."""
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    cls = LOSSES.get(key)
    if cls is None:
        raise ConfigError(f"unknown loss {name!r}; available: {', '.join(sorted(LOSSES))}")
    signature = inspect.signature(cls.__init__)
    accepted = [p for p in signature.parameters if p not in ("self", "class_counts")]
    takes_var_kwargs = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    unknown = [key_ for key_ in params if key_ not in accepted]
    if unknown and not takes_var_kwargs:
        raise ConfigError(
            f"loss {key!r} has no parameter {unknown[0]!r}; its parameters: {', '.join(accepted) or '(none)'}"
        )
    try:
        return cls(class_counts, **params)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"loss {key!r}: {error}") from error


