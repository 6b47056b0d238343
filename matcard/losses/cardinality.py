"""Cardinality-augmented losses (methods brief §2): the magnitude or the spread of a batch's errors.

Per mini-batch with one-hot targets y_i and softmax probabilities p_i, the error vectors
e_i = y_i - p_i together with one zero vector (the perfect-prediction anchor) form N = B + 1
points; the invariant of that point set at scale ``t`` is

- ``magnitude``: |tX| = sum(Z^-1 1),  Z = exp(-t D)   (one (B+1)^2 Cholesky solve per step)
- ``spread``:    E(tX) = sum_i 1 / sum_j Z_ij          (no solve)

A perfect batch collapses onto the anchor (invariant 1); each distinct mistake adds up to
about 1 while k identical mistakes count about once, so loss mass goes to distinct errors
rather than to the count of repeated ones. Numerics live in :mod:`matcard.magnitude`
(float64, safe norm, Cholesky with adaptive jitter and fallbacks, closed-form gradient).

Modes (``mode``):

- ``replace`` [default, the reference]: loss = invariant - 1
- ``multiply`` (the reference's "balanced"): loss = mean CE x invariant
- ``add``: loss = mean CE + ``lam`` x (invariant - 1)        [lam 1.0]
- ``divide``: loss = mean CE / invariant (the reference's contrastive form)

``t`` [1.0] or ``"auto"``: per batch, the smallest t at which the invariant of the (detached)
points reaches ``auto_fraction`` [0.5] of the number of distinct points, clamped to
``t_bounds`` [(0.5, 50)]; t is not differentiated through. Error vectors live in a set of
diameter <= sqrt(2), so t = 1 makes small errors nearly invisible; "auto" adapts to the
batch's current error scale.

``source`` [errors] or ``embeddings``: measure the batch's embeddings (passed as the third
argument; no anchor) instead of its error vectors. An invariant of embeddings is not a loss by
itself, so with embeddings the mode must combine it with CE (default then: ``divide``, which
rewards a batch whose embeddings are spread out, as in the reference's contrastive use).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from matcard.errors import ConfigError, UsageError
from matcard.losses.base import ImbalanceLoss, register
from matcard.magnitude import _distances_in_place, _scale_for_fraction_distances, invariant_of_points

Counts = Sequence[int] | np.ndarray | torch.Tensor
Mode = Literal["replace", "multiply", "add", "divide"]
_MODES = ("replace", "multiply", "add", "divide")


class CardinalityLoss(ImbalanceLoss):
    """Shared implementation of the magnitude and spread losses (see the module docstring)."""

    invariant: ClassVar[Literal["magnitude", "spread"]] = "magnitude"

    def __init__(
        self,
        class_counts: Counts,
        t: float | Literal["auto"] = 1.0,
        mode: Mode | None = None,
        lam: float = 1.0,
        source: Literal["errors", "embeddings"] = "errors",
        anchor: bool = True,
        auto_fraction: float = 0.5,
        t_bounds: tuple[float, float] = (0.5, 50.0),
    ) -> None:
        super().__init__(class_counts)
        if source not in ("errors", "embeddings"):
            raise ConfigError(f"source must be 'errors' or 'embeddings', got {source!r}")
        mode = mode or ("replace" if source == "errors" else "divide")
        if mode not in _MODES:
            raise ConfigError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
        if source == "embeddings" and mode == "replace":
            raise ConfigError(
                "mode 'replace' needs source 'errors': an invariant of embeddings is not a loss alone"
            )
        if t != "auto" and (not isinstance(t, int | float) or not float(t) > 0):
            raise ConfigError(f"t must be a positive number or 'auto', got {t!r}")
        if not 0.0 < auto_fraction < 1.0:
            raise ConfigError(f"auto_fraction must lie in (0, 1), got {auto_fraction}")
        if lam < 0:
            raise ConfigError(f"lam must be >= 0, got {lam}")
        low, high = (float(v) for v in t_bounds)
        if not 0 < low <= high:
            raise ConfigError(f"t_bounds must satisfy 0 < low <= high, got {t_bounds!r}")
        self.t = t if t == "auto" else float(t)
        self.mode: Mode = mode
        self.lam = float(lam)
        self.source = source
        self.anchor = bool(anchor)
        self.auto_fraction = float(auto_fraction)
        self.t_bounds = (low, high)
        self.uses_embeddings = source == "embeddings"
        self.last_t: float = float("nan") if t == "auto" else float(t)

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

    def measure(self, points: torch.Tensor) -> torch.Tensor:
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
        return invariant_of_points(points, t, self.invariant)

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor | None
    ) -> torch.Tensor:
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
    """Magnitude of the batch's error vectors with the zero anchor, minus 1 (O'Malley 2026).

    Defaults: t 1.0, mode replace, source errors, anchor on. See :mod:`matcard.losses.cardinality`.
    """

    invariant = "magnitude"


@register("spread")
class SpreadLoss(CardinalityLoss):
    """Spread of the batch's error vectors with the zero anchor, minus 1 (O'Malley 2026).

    Defaults: t 1.0, mode replace, source errors, anchor on. See :mod:`matcard.losses.cardinality`.
    """

    invariant = "spread"
