"""Optimal-transport reweighting (Guo et al., NeurIPS 2022; methods brief §5), for a normal training loop.

The reference learns one persistent weight per training example against a fixed balanced
meta set, in a separate stage on top of a pretrained backbone. To work as an ordinary loss
(``loss(logits, target, embeddings)``, no example indices, one pass), this implementation:

1. keeps a **balanced meta set** in buffers: either handed in with :meth:`set_meta_set`
   (e.g. 10 held-out examples per class, features from the same model), or, by default, a
   per-class ring buffer of the ``meta_per_class`` [10] most recent training examples'
   (detached) features, updated after every training batch;
2. per batch, initialises the batch's weight logits from class-balanced weights (``beta``
   [0.9999]) of the batch labels, then takes ``inner_steps`` [1] gradient steps (step
   ``weight_lr`` [1.0], scaled by the batch size so that it is independent of it) on the
   entropic OT distance (POT ``sinkhorn``, ``epsilon`` [0.1], up to ``max_iter`` [200]
   iterations, stopping once the marginals are met to ``tolerance`` [1e-4], ample for one
   weight step) between the batch (source, softmax of the weight logits) and the uniform
   meta set (target), with cost 0.5 (1 - cos(f_i, f_m)) + 0.5 ||e_{y_i} - e_{y_m}||^2;
3. trains on sum_i w_i CE_i with the (detached) weights rescaled to mean 1.

Features are the ``embeddings`` passed in (``uses_embeddings`` is True) or, when none are
given, the softmax probabilities. Until every class has a meta example the loss falls back
to class-balanced cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from matcard.errors import ConfigError, UsageError
from matcard.losses.base import ImbalanceLoss, class_weights, register

Counts = Sequence[int] | np.ndarray | torch.Tensor


@register("ot_reweight")
class OTReweightLoss(ImbalanceLoss):
    """Cross-entropy re-weighted by optimal transport to a balanced meta set (see module docstring)."""

    uses_embeddings = True

    cb_weight: torch.Tensor
    meta_features: torch.Tensor
    meta_filled: torch.Tensor
    meta_cursor: torch.Tensor

    def __init__(
        self,
        class_counts: Counts,
        meta_per_class: int = 10,
        epsilon: float = 0.1,
        max_iter: int = 200,
        inner_steps: int = 1,
        weight_lr: float = 1.0,
        beta: float = 0.9999,
        tolerance: float = 1e-4,
    ) -> None:
        super().__init__(class_counts)
        if meta_per_class < 1 or inner_steps < 0 or max_iter < 1:
            raise ConfigError("meta_per_class and max_iter must be >= 1 and inner_steps >= 0")
        if epsilon <= 0:
            raise ConfigError(f"epsilon must be > 0, got {epsilon}")
        self.meta_per_class, self.epsilon, self.max_iter = int(meta_per_class), float(epsilon), int(max_iter)
        self.inner_steps, self.weight_lr, self.tolerance = (
            int(inner_steps),
            float(weight_lr),
            float(tolerance),
        )
        self.register_buffer("cb_weight", class_weights(self.class_counts, "class_balanced", beta))
        # feature dimension is unknown until the first batch; the buffer is resized then
        self.register_buffer("meta_features", torch.zeros(self.n_classes, self.meta_per_class, 0))
        self.register_buffer(
            "meta_filled", torch.zeros(self.n_classes, self.meta_per_class, dtype=torch.bool)
        )
        self.register_buffer("meta_cursor", torch.zeros(self.n_classes, dtype=torch.long))
        self._init_weight_tracking()
        self.last_weights: torch.Tensor | None = None  # the latest batch's weights, for inspection
        self.fixed_meta = False

    def realised_class_weights(self) -> list[float] | None:
        return self._tracked_class_weights()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # the meta buffers take their size from the data; adopt the checkpoint's size before loading
        for name in ("meta_features", "meta_filled"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.zeros_like(saved))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- meta set ---------------------------------------------------------------------------
    def set_meta_set(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Use a fixed balanced meta set (features [M, D], labels [M]); the ring buffer is then frozen."""
        labels = labels.reshape(-1).long()
        if features.dim() != 2 or features.shape[0] != labels.shape[0]:
            raise UsageError("meta features must be [M, D] with one label per row")
        per_class = torch.bincount(labels, minlength=self.n_classes)
        if bool((per_class == 0).any()):
            missing = [int(c) for c in torch.nonzero(per_class == 0)[:, 0]]
            raise UsageError(f"the meta set has no example of classes {missing}")
        size = int(per_class.max())
        store = torch.zeros(self.n_classes, size, features.shape[1], device=features.device)
        filled = torch.zeros(self.n_classes, size, dtype=torch.bool, device=features.device)
        for c in range(self.n_classes):
            rows = features[labels == c].detach().float()
            store[c, : rows.shape[0]] = rows
            filled[c, : rows.shape[0]] = True
        self.meta_features, self.meta_filled = store, filled
        self.meta_cursor = torch.zeros(self.n_classes, dtype=torch.long, device=features.device)
        self.fixed_meta = True

    @torch.no_grad()
    def _remember(self, features: torch.Tensor, target: torch.Tensor) -> None:
        if self.meta_features.shape[-1] != features.shape[1]:
            self.meta_features = features.new_zeros(self.n_classes, self.meta_per_class, features.shape[1])
            self.meta_filled.zero_()
            self.meta_cursor.zero_()
        # rank of each row among the batch rows of its class (stable), keep each class's last K rows
        order = torch.sort(target, stable=True).indices
        sorted_target = target[order]
        counts = torch.bincount(target, minlength=self.n_classes)
        class_start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(target.shape[0], device=target.device) - class_start[sorted_target]
        keep = rank >= (counts[sorted_target] - self.meta_per_class)
        kept_rows, kept_class = order[keep], sorted_target[keep]
        kept_rank = rank[keep] - (counts[kept_class] - self.meta_per_class).clamp_min(0)
        slots = (self.meta_cursor[kept_class] + kept_rank) % self.meta_per_class
        self.meta_features[kept_class, slots] = features[kept_rows].to(self.meta_features.dtype)
        self.meta_filled[kept_class, slots] = True
        self.meta_cursor.add_(counts.clamp_max(self.meta_per_class)).remainder_(self.meta_per_class)

    def _meta_ready(self, feature_dim: int) -> bool:
        return self.meta_features.shape[-1] == feature_dim and bool(self.meta_filled.any(dim=1).all())

    # -- weights ----------------------------------------------------------------------------
    def batch_weights(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean-1 weights of the batch's samples from the OT step (float64, detached)."""
        import ot  # POT; imported here so that building a loss stays cheap

        batch = target.shape[0]
        init = self.cb_weight.to(features.device)[target]
        if not self._meta_ready(features.shape[1]):
            return init / init.mean()
        filled = self.meta_filled.reshape(-1)
        meta = self.meta_features.reshape(-1, self.meta_features.shape[-1])[filled].to(torch.float64)
        meta_labels = torch.arange(self.n_classes, device=features.device).repeat_interleave(
            self.meta_features.shape[1]
        )[filled]
        source = features.detach().to(torch.float64)
        cosine = F.normalize(source, dim=1) @ F.normalize(meta, dim=1).T
        label_distance = 2.0 * (target[:, None] != meta_labels[None, :]).to(torch.float64)  # ||e_a - e_b||^2
        cost = 0.5 * (1.0 - cosine) + 0.5 * label_distance
        target_mass = torch.full(
            (meta.shape[0],), 1.0 / meta.shape[0], dtype=torch.float64, device=cost.device
        )
        # Sinkhorn on NumPy (POT's torch backend costs ~5 ms per call at this size); the gradient
        # of the entropic OT value with respect to the source masses is the dual potential f.
        cost_np = cost.cpu().numpy()
        target_np = target_mass.cpu().numpy()
        logits = np.log(init.to(torch.float64).cpu().numpy())
        for _ in range(self.inner_steps):
            source_mass = np.exp(logits - logits.max())
            source_mass /= source_mass.sum()
            _, log = ot.sinkhorn(
                source_mass,
                target_np,
                cost_np,
                reg=self.epsilon,
                numItermax=self.max_iter,
                stopThr=self.tolerance,
                log=True,
                warn=False,
            )
            potential = self.epsilon * np.log(np.maximum(log["u"], 1e-300))
            potential -= potential.mean()
            gradient = source_mass * (potential - source_mass @ potential)  # chain rule through softmax
            logits = logits - self.weight_lr * batch * gradient
        logits = torch.from_numpy(logits).to(features.device)
        weights = torch.softmax(logits, dim=0) * batch
        return weights.detach()

    def compute(
        self, logits: torch.Tensor, target: torch.Tensor, embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        features = embeddings if embeddings is not None else torch.softmax(logits.detach(), dim=1)
        if features.dim() != 2 or features.shape[0] != logits.shape[0]:
            raise UsageError(
                f"embeddings must have shape [{logits.shape[0]}, D], got {tuple(features.shape)}"
            )
        features = features.detach()
        weights = self.batch_weights(features, target)
        if self.training and not self.fixed_meta:
            self._remember(features, target)
        self.last_weights = weights.float()
        self._track_weights(weights, target)
        per_sample = F.cross_entropy(logits, target, reduction="none")
        return (weights.to(per_sample.dtype) * per_sample).mean()
