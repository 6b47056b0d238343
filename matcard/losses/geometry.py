"""Geometry-only class weights: cross-entropy weighted by each class's embedding diversity.

Registered name ``magnitude_class_geometry``. A per-class ring buffer keeps the ``bank_size``
[32] most recent (detached) pooled embeddings of each class's training items. After every
training batch the class weights are re-estimated from an *equal-count* sample of every class
(the first k slots of each bank, k = the smallest bank fill), so a class's count never enters:
weight_c is proportional to |t X_c|^``power`` [1.0], the magnitude of its k embeddings (near-
identical embeddings merged, as in :func:`matcard.magnitude.stable_weighting`), normalised to
mean 1 over the classes and capped at ``max_weight`` [10]. A diverse class (many distinct
embeddings) is weighted up, a class of near-duplicates down. One scale t serves every class:
``t`` [auto] = 1 / (median pairwise distance of all banked embeddings), or a fixed number.
Classes with fewer than two banked items keep weight 1 until they have them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from matcard.errors import ConfigError, UsageError
from matcard.losses.base import ImbalanceLoss, normalise_weights, register
from matcard.magnitude import MERGE_TOL, _distances_in_place, _stable_weighting_tensor

Counts = Sequence[int] | np.ndarray | torch.Tensor


@register("magnitude_class_geometry")
class ClassGeometryLoss(ImbalanceLoss):
    """Cross-entropy with class weights from the magnitude of equal-count embedding samples (module doc)."""

    uses_embeddings = True

    bank: torch.Tensor
    bank_fill: torch.Tensor
    bank_cursor: torch.Tensor
    class_weight: torch.Tensor

    def __init__(
        self,
        class_counts: Counts,
        bank_size: int = 32,
        t: float | Literal["auto"] = "auto",
        power: float = 1.0,
        max_weight: float = 10.0,
        merge_tol: float = MERGE_TOL,
    ) -> None:
        super().__init__(class_counts)
        if isinstance(bank_size, bool) or not isinstance(bank_size, int) or bank_size < 2:
            raise ConfigError(f"bank_size must be an integer >= 2, got {bank_size!r}")
        if t != "auto" and (isinstance(t, bool) or not isinstance(t, int | float) or not float(t) > 0):
            raise ConfigError(f"t must be a positive number or 'auto', got {t!r}")
        if not power >= 0:
            raise ConfigError(f"power must be >= 0, got {power}")
        if not max_weight >= 1.0:
            raise ConfigError(f"max_weight must be >= 1 (weights have mean 1), got {max_weight}")
        self.bank_size, self.power, self.max_weight = int(bank_size), float(power), float(max_weight)
        self.t = t if t == "auto" else float(t)
        self.merge_tol = float(merge_tol)
        self.last_t = float("nan")
        # the embedding width is unknown until the first batch; the bank is resized then
        self.register_buffer("bank", torch.zeros(self.n_classes, self.bank_size, 0))
        self.register_buffer("bank_fill", torch.zeros(self.n_classes, dtype=torch.long))
        self.register_buffer("bank_cursor", torch.zeros(self.n_classes, dtype=torch.long))
        self.register_buffer("class_weight", torch.ones(self.n_classes, dtype=torch.float64))
        self._init_weight_tracking()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        saved = state_dict.get(prefix + "bank")
        if saved is not None and saved.shape != self.bank.shape:
            self.bank = torch.zeros_like(saved)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def realised_class_weights(self) -> list[float] | None:
        return self._tracked_class_weights()

    @torch.no_grad()
    def remember(self, embeddings: torch.Tensor, target: torch.Tensor) -> None:
        """Write a batch's embeddings into the per-class ring buffers (most recent kept)."""
        if self.bank.shape[-1] != embeddings.shape[1]:
            self.bank = embeddings.new_zeros(self.n_classes, self.bank_size, embeddings.shape[1]).float()
            self.bank_fill.zero_()
            self.bank_cursor.zero_()
        for c in torch.unique(target).tolist():
            rows = embeddings[target == c][-self.bank_size :].to(self.bank.dtype)
            slots = (int(self.bank_cursor[c]) + torch.arange(rows.shape[0])) % self.bank_size
            self.bank[c, slots.to(self.bank.device)] = rows
            self.bank_cursor[c] = (int(self.bank_cursor[c]) + rows.shape[0]) % self.bank_size
            self.bank_fill[c] = min(self.bank_size, int(self.bank_fill[c]) + rows.shape[0])

    @torch.no_grad()
    def update_weights(self) -> None:
        """Re-estimate the class weights from equal-count samples of the banks."""
        ready = [c for c in range(self.n_classes) if int(self.bank_fill[c]) >= 2]
        if len(ready) < 2:
            return
        k = min(int(self.bank_fill[c]) for c in ready)
        samples = [self.bank[c, :k].to(torch.float64) for c in ready]
        t = self.t
        if t == "auto":
            pooled = _distances_in_place(torch.cat(samples))
            positive = pooled[pooled > 0]
            if positive.numel() == 0:
                return
            t = 1.0 / float(positive.median())
        self.last_t = float(t)
        sizes = torch.stack([_stable_weighting_tensor(s, float(t), self.merge_tol).sum() for s in samples])
        weights = torch.ones(self.n_classes, dtype=torch.float64, device=self.class_weight.device)
        weights[ready] = normalise_weights(sizes.pow(self.power), self.max_weight).to(weights)
        self.class_weight.copy_(weights)

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        if embeddings is None:
            raise UsageError(f"{self.name} needs the batch's embeddings (loss.uses_embeddings is True)")
        if embeddings.dim() != 2 or embeddings.shape[0] != logits.shape[0]:
            raise UsageError(
                f"embeddings must have shape [{logits.shape[0]}, D], got {tuple(embeddings.shape)}"
            )
        if self.training and torch.is_grad_enabled():
            self.remember(embeddings.detach(), target)
            self.update_weights()
        weights = self.class_weight[target]
        self._track_weights(weights, target)
        per_sample = F.cross_entropy(logits, target, reduction="none")
        return (weights.to(per_sample.dtype) * per_sample).mean()

    def extra_repr(self) -> str:
        return f"n_classes={self.n_classes}, bank_size={self.bank_size}, t={self.t!r}, power={self.power}"
