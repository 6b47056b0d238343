"""Losses that move logits or margins by class frequency (methods brief §3).

Registered names: ``ldam``, ``logit_adjusted``, ``balanced_softmax``, ``seesaw``, ``equalization``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from matcard.errors import ConfigError
from matcard.losses.base import ImbalanceLoss, as_class_counts, class_weights, register

Counts = Sequence[int] | np.ndarray | torch.Tensor


@register("ldam")
class LDAMLoss(ImbalanceLoss):
    """LDAM (Cao 2019) with optional deferred re-weighting (DRW).

    Margin Delta_c = max_margin * n_c^{-1/4} / max_c n_c^{-1/4} is subtracted from the true
    class's logit, then CE(s * (z - Delta_y e_y)). ``max_margin`` [0.5], ``s`` [30.0] assumes
    the model ends in a normalised (cosine) classifier whose logits lie in [-1, 1]; use
    ``s=1`` for an ordinary linear head. ``drw`` [True]: unweighted until epoch
    ``drw_start`` x max_epochs (``drw_start`` [0.8]), then class-balanced weights with ``beta``
    [0.9999]. The switch happens in :meth:`on_epoch_start` (call it every epoch).
    """

    margins: torch.Tensor
    drw_weight: torch.Tensor
    active_weight: torch.Tensor

    def __init__(
        self,
        class_counts: Counts,
        max_margin: float = 0.5,
        s: float = 30.0,
        drw: bool = True,
        drw_start: float = 0.8,
        beta: float = 0.9999,
    ) -> None:
        super().__init__(class_counts)
        if max_margin < 0 or s <= 0:
            raise ConfigError(f"ldam needs max_margin >= 0 and s > 0, got {max_margin}, {s}")
        if not 0.0 <= drw_start <= 1.0:
            raise ConfigError(f"drw_start must lie in [0, 1], got {drw_start}")
        self.max_margin, self.s, self.drw, self.drw_start = (
            float(max_margin),
            float(s),
            bool(drw),
            float(drw_start),
        )
        quarter = self.class_counts.to(torch.float64).clamp_min(1.0).pow(-0.25)
        self.register_buffer("margins", (max_margin * quarter / quarter.max()).to(torch.float32))
        self.register_buffer("drw_weight", class_weights(self.class_counts, "class_balanced", beta).float())
        self.register_buffer("active_weight", torch.ones(self.n_classes))

    def realised_class_weights(self) -> list[float] | None:
        return [float(v) for v in self.active_weight.cpu()]  # ones until DRW switches on

    def on_epoch_start(self, epoch: int, max_epochs: int) -> None:
        # an unknown / unlimited schedule (max_epochs None or <= 0) never defers
        deferred = (
            self.drw and bool(max_epochs) and max_epochs > 0 and epoch >= int(self.drw_start * max_epochs)
        )
        self.active_weight.copy_(self.drw_weight if deferred else torch.ones_like(self.drw_weight))

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        shifted = logits - F.one_hot(target, self.n_classes).to(logits.dtype) * self.margins.to(logits.dtype)
        return F.cross_entropy(self.s * shifted, target, weight=self.active_weight.to(logits.dtype))


def log_prior(class_counts: Counts) -> torch.Tensor:
    counts = as_class_counts(class_counts).clamp_min(1.0)
    return torch.log(counts / counts.sum())


def posthoc_logit_adjust(logits: torch.Tensor, class_counts: Counts, tau: float = 1.0) -> torch.Tensor:
    """Post-hoc logit adjustment (Menon 2021): z - tau log pi, to be arg-maxed at prediction time."""
    return logits - tau * log_prior(class_counts).to(logits.device, logits.dtype)


@register("logit_adjusted")
class LogitAdjustedLoss(ImbalanceLoss):
    """Logit-adjusted cross-entropy (Menon 2021): CE(z + tau log pi), ``tau`` [1.0].

    Predictions from a model trained with this loss use the raw logits. :meth:`adjust` gives
    the post-hoc variant, z - tau log pi, for a model trained with plain CE.
    """

    log_prior: torch.Tensor

    def __init__(self, class_counts: Counts, tau: float = 1.0) -> None:
        super().__init__(class_counts)
        self.tau = float(tau)
        self.register_buffer("log_prior", log_prior(self.class_counts).float())

    def adjust(self, logits: torch.Tensor) -> torch.Tensor:
        return logits - self.tau * self.log_prior.to(logits.dtype)

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        return F.cross_entropy(logits + self.tau * self.log_prior.to(logits.dtype), target)


@register("balanced_softmax")
class BalancedSoftmaxLoss(LogitAdjustedLoss):
    """Balanced softmax (Ren 2020): softmax with class counts, CE(z + log n_c) == logit adjustment, tau 1."""

    def __init__(self, class_counts: Counts) -> None:
        super().__init__(class_counts, tau=1.0)


@register("seesaw")
class SeesawLoss(ImbalanceLoss):
    """Seesaw loss (Wang 2021).

    For a sample of class i the logit of every other class j is scaled inside the softmax by
    S_ij = M_ij C_ij: mitigation M_ij = (n_j / n_i)^p when j is rarer than i (else 1), ``p``
    [0.8]; compensation C_ij = (sigma_j / sigma_i)^q when the model is more confident in
    the wrong class j than in i (else 1), ``q`` [2.0], sigma the (detached) softmax.
    Class counts are the ones given at construction; ``accumulate`` [False] adds the counts
    of the training batches seen, as the original online implementation does.
    """

    running_counts: torch.Tensor

    def __init__(
        self,
        class_counts: Counts,
        p: float = 0.8,
        q: float = 2.0,
        accumulate: bool = False,
        eps: float = 1e-2,
    ) -> None:
        super().__init__(class_counts)
        self.p, self.q, self.accumulate, self.eps = float(p), float(q), bool(accumulate), float(eps)
        start = torch.zeros(self.n_classes) if accumulate else self.class_counts.clone()
        self.register_buffer("running_counts", start.to(torch.float32))

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        if self.accumulate and self.training:
            self.running_counts += torch.bincount(target, minlength=self.n_classes).to(
                self.running_counts.dtype
            )
        counts = self.running_counts.clamp_min(1.0).to(logits.dtype)
        one_hot = F.one_hot(target, self.n_classes).to(logits.dtype)
        log_scale = torch.zeros_like(logits)
        if self.p > 0:
            ratio = counts[None, :] / counts[target][:, None]  # n_j / n_i
            log_scale = log_scale + self.p * torch.log(ratio.clamp(max=1.0))
        if self.q > 0:
            with torch.no_grad():
                probabilities = torch.softmax(logits.detach(), dim=1)
                self_probability = probabilities.gather(1, target[:, None]).clamp_min(self.eps)
                ratio = probabilities / self_probability
            log_scale = log_scale + self.q * torch.log(ratio.clamp(min=1.0))
        log_scale = log_scale * (1.0 - one_hot)  # the true class keeps its own logit
        return F.cross_entropy(logits + log_scale, target)


@register("equalization")
class EqualizationLoss(ImbalanceLoss):
    """Softmax equalization loss (Tan 2020).

    Rare classes (training frequency below ``threshold`` [1/C]) drop out of the softmax
    denominator of samples from other classes, so frequent classes stop pushing negative
    gradients onto them. Each dropped term is kept with probability 1 - ``gamma`` (the
    random beta of the softmax variant) [gamma 0.9]; ``gamma=1`` drops all, deterministically.
    Only the training mode applies the equalisation; evaluation returns plain CE.
    """

    rare: torch.Tensor

    def __init__(self, class_counts: Counts, threshold: float | None = None, gamma: float = 0.9) -> None:
        super().__init__(class_counts)
        if not 0.0 <= gamma <= 1.0:
            raise ConfigError(f"gamma must lie in [0, 1], got {gamma}")
        self.threshold = float(threshold) if threshold is not None else 1.0 / self.n_classes
        self.gamma = float(gamma)
        self.register_buffer("rare", self.class_prior < self.threshold)

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        if not self.training:
            return F.cross_entropy(logits, target)
        one_hot = F.one_hot(target, self.n_classes).bool()
        drop = self.rare[None, :].expand_as(one_hot) & ~one_hot
        if self.gamma < 1.0:
            drop = drop & (torch.rand(drop.shape, device=logits.device) < self.gamma)
        masked = logits.masked_fill(drop, float("-inf"))
        return F.cross_entropy(masked, target)
