"""Every imbalance loss behind one interface, plus samplers and resamplers.

    from matcard.losses import build, LOSSES
    loss = build("magnitude", class_counts=[500, 50, 20])      # a torch.nn.Module
    value = loss(logits, target)                               # embeddings=... when loss.uses_embeddings
    loss.on_epoch_start(epoch, max_epochs)                     # once per epoch (LDAM-DRW schedule)

Registered names (defaults in each class's docstring): ce, mse, weighted_ce, focal,
class_balanced, ldam, logit_adjusted, balanced_softmax, seesaw, equalization, inverse_view,
ot_reweight, magnitude, spread, magnitude_reference, spread_reference, magnitude_class_geometry.
``magnitude`` / ``spread`` default to per-sample CE weights from the detached batch errors
(mode "weight"); the reference loss (mode "replace", t 1) collapses to a constant predictor on
imbalanced data and is kept for reproductions (see :mod:`matcard.losses.cardinality`).
"""

from __future__ import annotations

from matcard.losses import cardinality, geometry, margin, ot, reweighting  # noqa: F401  (registration)
from matcard.losses.base import LOSSES, ImbalanceLoss, build, class_weights, register
from matcard.losses.cardinality import (
    CardinalityLoss,
    MagnitudeLoss,
    MagnitudeReferenceLoss,
    SpreadLoss,
    SpreadReferenceLoss,
)
from matcard.losses.geometry import ClassGeometryLoss
from matcard.losses.margin import (
    BalancedSoftmaxLoss,
    EqualizationLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    SeesawLoss,
    posthoc_logit_adjust,
)
from matcard.losses.ot import OTReweightLoss
from matcard.losses.resampling import RESAMPLERS, resample
from matcard.losses.reweighting import (
    ClassBalancedLoss,
    CrossEntropyLoss,
    FocalLoss,
    InverseViewLoss,
    MSELoss,
    WeightedCrossEntropyLoss,
)
from matcard.losses.samplers import ClassBalancedSampler, UnderSampler, labels_of

__all__ = [
    "LOSSES",
    "RESAMPLERS",
    "BalancedSoftmaxLoss",
    "CardinalityLoss",
    "ClassBalancedLoss",
    "ClassBalancedSampler",
    "ClassGeometryLoss",
    "CrossEntropyLoss",
    "EqualizationLoss",
    "FocalLoss",
    "ImbalanceLoss",
    "InverseViewLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "MSELoss",
    "MagnitudeLoss",
    "MagnitudeReferenceLoss",
    "OTReweightLoss",
    "SeesawLoss",
    "SpreadLoss",
    "SpreadReferenceLoss",
    "UnderSampler",
    "WeightedCrossEntropyLoss",
    "build",
    "class_weights",
    "labels_of",
    "posthoc_logit_adjust",
    "register",
    "resample",
]
