"""Cardinality-augmented losses (methods brief §2, §9): the magnitude or the spread of a batch's errors.

Per mini-batch with one-hot targets y_i and softmax probabilities p_i, the error vectors
e_i = y_i - p_i together with one zero vector (the perfect-prediction anchor) form N = B + 1
points; the invariant of that point set at scale ``t`` is

- ``magnitude``: |tX| = sum(Z^-1 1),  Z = exp(-t D)   (one (B+1)^2 Cholesky solve per step)
- ``spread``:    E(tX) = sum_i 1 / sum_j Z_ij          (no solve)

Each distinct mistake adds up to about 1 while k identical mistakes count about once, so mass
goes to distinct errors rather than to the count of repeated ones. Numerics live in
:mod:`matcard.magnitude` (float64, safe norm, Cholesky with adaptive jitter, closed-form gradient,
cluster merging and the exact 1-D weighting for the detached weights).

Modes (``mode``):

- ``weight`` [default]: per-sample cross-entropy weights from the invariant of the *detached*
  errors (with the anchor). magnitude: the weighting w (Z w = 1, near-coincident points merged,
  each cluster's weight shared by its members); spread: each point's share 1 / sum_j Z_ij. The
  non-anchor weights are clipped at 0, normalised to mean 1 over the batch and capped at
  ``max_weight`` [10] (renormalised). A cluster of identical mistakes shares about one unit of
  weight, each distinct mistake counts fully, and the loss stays a proper scoring rule (CE), so
  a constant predictor is no optimum. Default ``t`` for this mode: 100 (see ``DEFAULT_WEIGHT_T``).
- ``replace`` (the reference, the reproduction setting; also registered as
  ``magnitude_reference`` / ``spread_reference``): loss = invariant - 1, t 1. It collapses to a
  constant predictor on imbalanced data: a constant has only two distinct error vectors, so its
  invariant does not grow with the batch while an accurate model's does, and perturbing the
  constant raises the invariant linearly while the data term would fall only quadratically.
- ``multiply`` (the reference's "balanced"): loss = mean CE x invariant
- ``add``: loss = mean CE + ``lam`` x (invariant - 1)        [lam 1.0]
- ``divide``: loss = mean CE / invariant (the reference's contrastive form)

``warmup_epochs`` [0]: plain CE for the first k epochs (switched in :meth:`on_epoch_start`, state
in a buffer), then the mode above; meant for ``add`` / ``multiply``, whose cardinality term
otherwise pulls an untrained model towards the constant.

``t`` [100 for ``weight``, else 1.0] or ``"auto"``: per batch, the smallest t at which the
invariant of the (detached) points reaches ``auto_fraction`` [0.5] of the number of distinct
points, clamped to ``t_bounds`` [(0.5, 50)]; t is not differentiated through.

``source`` [errors] or ``embeddings``: measure the batch's embeddings (passed as the third
argument; no anchor) instead of its error vectors, combined with CE (default then: ``divide``).

``magnitude_class_geometry``: class weights from the magnitude of an equal-count sample of each
class's recent (detached) embeddings, so within-class diversity, not the count, sets the weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from matcard.errors import ConfigError, UsageError
from matcard.losses.base import ImbalanceLoss, normalise_weights, register
from matcard.magnitude import (
    MERGE_TOL,
    _distances_in_place,
    _scale_for_fraction_distances,
    _stable_weighting_tensor,
    invariant_of_points,
)

Counts = Sequence[int] | np.ndarray | torch.Tensor
Mode = Literal["weight", "replace", "multiply", "add", "divide"]
_MODES = ("weight", "replace", "multiply", "add", "divide")
# Default scale of mode "weight": errors closer than about 1/t count as one. In one dimension a
# point's weight is about (tanh(t g_left / 2) + tanh(t g_right / 2)) / 2 for its gaps g to its
# neighbours, so a small t sends nearly all weight to isolated errors and starves the dense ones
# (confident, correct items). At t = 20 that stalled CGCNN on perov-5 (3.9 % positive) at the
# all-negative start in 2 of 10 seeds: the train loss stayed flat for 7 epochs while CE and fixed
# class weights learned. t = 100 (errors within about 0.01 of each other share weight) left both
# stalled seeds within a few epochs; capping the weights at 3 instead did too, while a 2-epoch CE
# warm-up or a uniform floor of 0.5 on the weights did not (pilot, seeds 2 and 4).
DEFAULT_WEIGHT_T = 100.0
_SQRT2 = math.sqrt(2.0)


def _check_scale_param(t: object) -> None:
    if t == "auto":
        return
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or not t > 0:
        raise ConfigError(f"t must be a positive number or 'auto', got {t!r}")


class CardinalityLoss(ImbalanceLoss):
    """Shared implementation of the magnitude and spread losses (see the module docstring)."""

    invariant: ClassVar[Literal["magnitude", "spread"]] = "magnitude"
    default_mode: ClassVar[Mode] = "weight"

    cardinality_on: torch.Tensor

    def __init__(
        self,
        class_counts: Counts,
        t: float | Literal["auto"] | None = None,
        mode: Mode | None = None,
        lam: float = 1.0,
        source: Literal["errors", "embeddings"] = "errors",
        anchor: bool = True,
        auto_fraction: float = 0.5,
        t_bounds: tuple[float, float] = (0.5, 50.0),
        max_weight: float = 10.0,
        merge_tol: float = MERGE_TOL,
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(class_counts)
        if source not in ("errors", "embeddings"):
            raise ConfigError(f"source must be 'errors' or 'embeddings', got {source!r}")
        mode = mode or (self.default_mode if source == "errors" else "divide")
        if mode not in _MODES:
            raise ConfigError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
        if source == "embeddings" and mode in ("replace", "weight"):
            raise ConfigError(f"mode {mode!r} needs source 'errors': embeddings are combined with CE")
        if t is None:
            t = DEFAULT_WEIGHT_T if mode == "weight" else 1.0
        _check_scale_param(t)
        if not 0.0 < auto_fraction < 1.0:
            raise ConfigError(f"auto_fraction must lie in (0, 1), got {auto_fraction}")
        if lam < 0:
            raise ConfigError(f"lam must be >= 0, got {lam}")
        low, high = (float(v) for v in t_bounds)
        if not 0 < low <= high:
            raise ConfigError(f"t_bounds must satisfy 0 < low <= high, got {t_bounds!r}")
        if not max_weight >= 1.0:
            raise ConfigError(f"max_weight must be >= 1 (weights have mean 1), got {max_weight}")
        if not 0.0 <= merge_tol < 1.0:
            raise ConfigError(f"merge_tol must lie in [0, 1), got {merge_tol}")
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be a non-negative integer, got {warmup_epochs!r}")
        self.t = t if t == "auto" else float(t)
        self.mode: Mode = mode
        self.lam = float(lam)
        self.source = source
        self.anchor = bool(anchor)
        self.auto_fraction = float(auto_fraction)
        self.t_bounds = (low, high)
        self.max_weight = float(max_weight)
        self.merge_tol = float(merge_tol)
        self.warmup_epochs = int(warmup_epochs)
        self.uses_embeddings = source == "embeddings"
        self.last_t: float = float("nan") if t == "auto" else float(t)
        self.last_weights: torch.Tensor | None = None  # the latest batch's per-sample weights (mode weight)
        self.register_buffer("cardinality_on", torch.tensor(self.warmup_epochs == 0))
        self._init_weight_tracking()

    def on_epoch_start(self, epoch: int, max_epochs: int) -> None:
        self.cardinality_on.fill_(epoch >= self.warmup_epochs)

    def realised_class_weights(self) -> list[float] | None:
        return self._tracked_class_weights() if self.mode == "weight" else None

    def points(
        self, logits: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        """The float64 point set whose invariant is measured."""
        if self.source == "embeddings":
            if embeddings is None:
                raise UsageError(f"{self.name} with source='embeddings' needs the batch's embeddings")
            if embeddings.dim() != 2 or embeddings.shape[0] != logits.shape[0]:
                raise UsageError(
                    f"embeddings must have shape [{logits.shape[0]}, D], got {tuple(embeddings.shape)}"
                )
            return embeddings.to(torch.float64)
        probabilities = torch.softmax(logits.to(torch.float64), dim=1)
        errors = F.one_hot(target, self.n_classes).to(torch.float64) - probabilities
        if self.anchor:
            errors = torch.cat([errors, errors.new_zeros(1, errors.shape[1])], dim=0)
        return errors

    def scale(self, points: torch.Tensor) -> float:
        """The scale t for this batch (fixed, or chosen from the detached points when "auto")."""
        if self.t == "auto":
            t = _scale_for_fraction_distances(
                _distances_in_place(points.detach()),
                self.auto_fraction,
                self.invariant,
                *self.t_bounds,
                iterations=20,
            )
        else:
            t = float(self.t)
        self.last_t = t
        return t

    def measure(self, points: torch.Tensor) -> torch.Tensor:
        return invariant_of_points(points, self.scale(points), self.invariant)

    @torch.no_grad()
    def sample_weights(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample weights of mode ``weight`` (float64, detached, mean 1, capped)."""
        points = self.points(logits.detach(), target, None)
        t = self.scale(points)
        batch = logits.shape[0]
        if self.invariant == "spread":
            raw = _distances_in_place(points).mul_(-t).exp_().sum(dim=1).reciprocal_()
        elif self.n_classes == 2:
            # binary errors lie on a line, e_i = (y1_i - p1_i) (-1, 1): exact 1-D weighting
            points = _SQRT2 * points[:, 1:]
            raw = _stable_weighting_tensor(points, t, self.merge_tol)
        else:
            raw = _stable_weighting_tensor(points, t, self.merge_tol)
        return normalise_weights(raw[:batch], self.max_weight)

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        if not bool(self.cardinality_on):
            return F.cross_entropy(logits, target)
        if self.mode == "weight":
            weights = self.sample_weights(logits, target)
            self.last_weights = weights
            self._track_weights(weights, target)
            per_sample = F.cross_entropy(logits, target, reduction="none")
            return (weights.to(per_sample.dtype) * per_sample).mean()
        value = self.measure(self.points(logits, target, embeddings)).to(logits.dtype)
        if self.mode == "replace":
            return value - 1.0
        cross_entropy = F.cross_entropy(logits, target)
        if self.mode == "multiply":
            return cross_entropy * value
        if self.mode == "add":
            return cross_entropy + self.lam * (value - 1.0)
        return cross_entropy / value

    def extra_repr(self) -> str:
        return f"n_classes={self.n_classes}, t={self.t!r}, mode={self.mode!r}, source={self.source!r}"


@register("magnitude")
class MagnitudeLoss(CardinalityLoss):
    """Cross-entropy weighted by the magnitude weighting of the batch's detached errors (mode weight).

    Defaults: mode weight, t 100, max_weight 10, source errors, anchor on. ``mode="replace"`` with
    t 1 is the reference loss (``magnitude_reference``). See :mod:`matcard.losses.cardinality`.
    """

    invariant = "magnitude"


@register("spread")
class SpreadLoss(CardinalityLoss):
    """Cross-entropy weighted by each detached error's share of the spread, 1 / sum_j Z_ij (mode weight).

    Defaults: mode weight, t 100, max_weight 10, source errors, anchor on. ``mode="replace"`` with
    t 1 is the reference loss (``spread_reference``). See :mod:`matcard.losses.cardinality`.
    """

    invariant = "spread"


@register("magnitude_reference")
class MagnitudeReferenceLoss(CardinalityLoss):
    """The reference magnitude loss, |X| - 1 of errors + anchor at t 1 (mode replace by default).

    For reproductions only: it collapses to a constant predictor on imbalanced data.
    """

    invariant = "magnitude"
    default_mode = "replace"


@register("spread_reference")
class SpreadReferenceLoss(CardinalityLoss):
    """The reference spread loss, E(X) - 1 of errors + anchor at t 1 (mode replace by default).

    For reproductions only: it collapses to a constant predictor on imbalanced data.
    """

    invariant = "spread"
    default_mode = "replace"
