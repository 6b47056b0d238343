"""Losses that re-weight cross-entropy per sample or per class (methods brief §3-4).

Registered names: ``ce``, ``mse``, ``weighted_ce``, ``focal``, ``class_balanced``, ``inverse_view``.
Every loss returns the mean over the batch (weighted losses: sum_i w_{y_i} l_i / B, so the
loss scale does not depend on how many minority samples a batch happens to hold).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from matcard.errors import ConfigError
from matcard.losses.base import ImbalanceLoss, WeightScheme, class_weights, register

Counts = Sequence[int] | np.ndarray | torch.Tensor


@register("ce")
class CrossEntropyLoss(ImbalanceLoss):
    """Plain cross-entropy (the baseline). ``label_smoothing`` [0.0]."""

    def __init__(self, class_counts: Counts, label_smoothing: float = 0.0) -> None:
        super().__init__(class_counts)
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)


@register("mse")
class MSELoss(ImbalanceLoss):
    """Mean squared error between softmax probabilities and one-hot targets (a reference comparison).

    Computed as mean over batch and classes, like ``nn.MSELoss()(softmax(z), one_hot(y))``.
    """

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        probabilities = torch.softmax(logits, dim=1)
        return F.mse_loss(probabilities, F.one_hot(target, self.n_classes).to(probabilities.dtype))


@register("weighted_ce")
class WeightedCrossEntropyLoss(ImbalanceLoss):
    """Cross-entropy with fixed class weights. ``scheme`` [inverse]: inverse (N / (C n_c)),
    inverse_sqrt (1/sqrt(n_c), mean 1), median (median-frequency), class_balanced (``beta``).
    ``weights``: explicit per-class weights instead of a scheme (one positive finite value per
    class, used as given), e.g. a count-matched control at a measured ratio ``[1.0, 8.9]``."""

    class_weight: torch.Tensor

    def __init__(
        self,
        class_counts: Counts,
        scheme: WeightScheme | None = None,
        beta: float = 0.9999,
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(class_counts)
        if weights is not None:
            if scheme is not None:
                raise ConfigError("weighted_ce: give either weights or scheme, not both")
            explicit = explicit_class_weights(weights, self.n_classes, "weights")
            self.scheme = "explicit"
            self.register_buffer("class_weight", explicit)  # float64: the control reports them exactly
        else:
            self.scheme = scheme or "inverse"
            weights_ = class_weights(self.class_counts, self.scheme, beta)  # type: ignore[arg-type]
            self.register_buffer("class_weight", weights_.to(torch.float32))

    def realised_class_weights(self) -> list[float] | None:
        return [float(v) for v in self.class_weight.cpu()]

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        per_sample = F.cross_entropy(logits, target, reduction="none")
        return (self.class_weight.to(per_sample.dtype)[target] * per_sample).mean()

    def extra_repr(self) -> str:
        return f"n_classes={self.n_classes}, scheme={self.scheme!r}"


def explicit_class_weights(values: object, n_classes: int, field: str) -> torch.Tensor:
    """Validate user-given class weights: a list of ``n_classes`` positive finite numbers."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | np.ndarray | torch.Tensor):
        raise ConfigError(f"{field} must be a list of {n_classes} positive numbers, got {values!r}")
    message = f"{field} must be a list of {n_classes} positive numbers, got {values!r}"
    try:
        tensor = torch.as_tensor([float(v) for v in values], dtype=torch.float64)  # type: ignore[union-attr]
    except (TypeError, ValueError) as error:
        raise ConfigError(message) from error
    if tensor.numel() != n_classes:
        raise ConfigError(f"{field} needs one value per class ({n_classes}), got {tensor.numel()}")
    if not bool(torch.isfinite(tensor).all()) or bool((tensor <= 0).any()):
        raise ConfigError(f"{field} must be positive and finite, got {tensor.tolist()}")
    return tensor


def focal_terms(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample focal loss -(1 - p_t)^gamma log p_t (no alpha), computed from log-probabilities."""
    log_p_t = torch.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
    p_t = log_p_t.exp()
    return -((1.0 - p_t).clamp_min(0.0) ** gamma) * log_p_t


@register("focal")
class FocalLoss(ImbalanceLoss):
    """Focal loss (Lin 2017): -alpha_t (1 - p_t)^gamma log p_t.

    ``gamma`` [2.0]. ``alpha``: a float is the positive-class (class 1) weight of a binary task
    (class 0 gets 1 - alpha) [0.25 for binary tasks, none for multi-class]; a sequence gives
    per-class weights; ``None`` disables alpha.
    """

    alpha_weight: torch.Tensor

    def __init__(
        self,
        class_counts: Counts,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | str | None = "default",
    ) -> None:
        super().__init__(class_counts)
        if gamma < 0:
            raise ConfigError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        if alpha == "default":
            alpha = 0.25 if self.n_classes == 2 else None
        if alpha is None:
            weights = torch.ones(self.n_classes)
        elif isinstance(alpha, int | float):
            if self.n_classes != 2:
                raise ConfigError("a scalar focal alpha applies to binary tasks; give one alpha per class")
            weights = torch.tensor([1.0 - float(alpha), float(alpha)])
        else:
            weights = torch.as_tensor(list(alpha), dtype=torch.float32)
            if weights.numel() != self.n_classes:
                raise ConfigError(f"alpha needs {self.n_classes} values, got {weights.numel()}")
        self.register_buffer("alpha_weight", weights.to(torch.float32))

    def realised_class_weights(self) -> list[float] | None:
        return [float(v) for v in self.alpha_weight.cpu()]

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        return (self.alpha_weight.to(logits.dtype)[target] * focal_terms(logits, target, self.gamma)).mean()


@register("class_balanced")
class ClassBalancedLoss(ImbalanceLoss):
    """Class-balanced loss (Cui 2019): weights (1 - beta) / (1 - beta^n_c) normalised to sum to C.

    ``beta`` [0.9999], ``base`` [ce] or focal (with ``gamma`` [2.0]).
    """

    class_weight: torch.Tensor

    def __init__(
        self,
        class_counts: Counts,
        beta: float = 0.9999,
        base: Literal["ce", "focal"] = "ce",
        gamma: float = 2.0,
    ) -> None:
        super().__init__(class_counts)
        if base not in ("ce", "focal"):
            raise ConfigError(f"class_balanced base must be 'ce' or 'focal', got {base!r}")
        self.beta, self.base, self.gamma = float(beta), base, float(gamma)
        weights = class_weights(self.class_counts, "class_balanced", beta)
        self.register_buffer("class_weight", weights.to(torch.float32))

    def realised_class_weights(self) -> list[float] | None:
        return [float(v) for v in self.class_weight.cpu()]

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        if self.base == "focal":
            per_sample = focal_terms(logits, target, self.gamma)
        else:
            per_sample = F.cross_entropy(logits, target, reduction="none")
        return (self.class_weight.to(per_sample.dtype)[target] * per_sample).mean()


@register("inverse_view")
class InverseViewLoss(ImbalanceLoss):
    """Inverse-view reweighting (methods brief §4): drive per-class average losses to be equal.

    L_c is an exponential moving average (``momentum`` [0.9]) of the per-class mean
    cross-entropy over training batches; after each training batch the class weights are
    updated in closed form, w*_c = (L_bar L_c + alpha w0_c) / (L_c^2 + alpha), with w0 the
    previous weights (initially ones), ridge ``alpha`` [0.5], renormalised to mean 1 over the
    classes seen so far. The current weights multiply the per-sample cross-entropy; the update
    happens only in training mode, so evaluation does not move the weights.
    ``imbalance_coefficient`` = max_c L_c / min_c L_c is the diagnostic.
    """

    ema_loss: torch.Tensor
    seen: torch.Tensor
    class_weight: torch.Tensor

    def __init__(self, class_counts: Counts, alpha: float = 0.5, momentum: float = 0.9) -> None:
        super().__init__(class_counts)
        if alpha <= 0:
            raise ConfigError(f"alpha must be > 0, got {alpha}")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"momentum must lie in [0, 1), got {momentum}")
        self.alpha, self.momentum = float(alpha), float(momentum)
        self.register_buffer("ema_loss", torch.zeros(self.n_classes, dtype=torch.float64))
        self.register_buffer("seen", torch.zeros(self.n_classes, dtype=torch.bool))
        self.register_buffer("class_weight", torch.ones(self.n_classes, dtype=torch.float64))
        self._init_weight_tracking()

    def realised_class_weights(self) -> list[float] | None:
        return self._tracked_class_weights()

    @property
    def imbalance_coefficient(self) -> float:
        if int(self.seen.sum()) < 2:
            return float("nan")
        losses = self.ema_loss[self.seen]
        return float(losses.max() / losses.min().clamp_min(1e-12))

    @torch.no_grad()
    def update(self, per_sample: torch.Tensor, target: torch.Tensor) -> None:
        """Fold one batch's per-class mean losses into the EMA, then re-solve the weights."""
        values = per_sample.detach().to(torch.float64)
        sums = torch.zeros(self.n_classes, dtype=torch.float64, device=values.device).index_add_(
            0, target, values
        )
        counts = torch.bincount(target, minlength=self.n_classes).to(torch.float64)
        present = counts > 0
        batch_mean = sums / counts.clamp_min(1.0)
        first = present & ~self.seen
        again = present & self.seen
        self.ema_loss[first] = batch_mean[first]
        self.ema_loss[again] = self.momentum * self.ema_loss[again] + (1 - self.momentum) * batch_mean[again]
        self.seen |= present
        seen = self.seen
        losses = self.ema_loss[seen]
        mean_loss = losses.mean()
        prior = self.class_weight[seen]
        solved = (mean_loss * losses + self.alpha * prior) / (losses.square() + self.alpha)
        self.class_weight[seen] = solved / solved.mean()

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        per_sample = F.cross_entropy(logits, target, reduction="none")
        weights = self.class_weight.to(per_sample.dtype)[target]  # weights from previous batches
        if self.training and torch.is_grad_enabled():
            self._track_weights(weights, target)
            self.update(per_sample, target)
        return (weights * per_sample).mean()
