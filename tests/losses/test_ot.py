"""OT reweighting: balanced meta memory, POT Sinkhorn step, fallback and checkpointing."""

from __future__ import annotations

import ot
import pytest
import torch
import torch.nn.functional as F

from matcard.errors import UsageError
from matcard.losses import build, class_weights

COUNTS = [40, 8, 4]


def batch(seed: int, size: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 3, (size,), generator=generator)
    features = torch.randn(size, 5, generator=generator) + F.one_hot(target, 5).float() * 2
    logits = torch.randn(size, 3, generator=generator)
    return logits, target, features


def test_falls_back_to_class_balanced_ce_until_every_class_has_a_meta_example() -> None:
    loss = build("ot_reweight", COUNTS)
    logits, target, features = batch(0)
    target[:] = 0  # only class 0 seen so far
    value = loss(logits, target, features)
    cb = class_weights(COUNTS, "class_balanced")[target]
    weights = (cb / cb.mean()).float()
    assert float(value) == pytest.approx(
        float((weights * F.cross_entropy(logits, target, reduction="none")).mean())
    )
    assert bool(loss.meta_filled[0].any()) and not bool(loss.meta_filled[1].any())


def test_one_weight_step_lowers_the_ot_distance_to_the_balanced_meta_set() -> None:
    loss = build("ot_reweight", COUNTS, meta_per_class=4)
    _, meta_target, meta_features = batch(1, size=60)
    loss.set_meta_set(meta_features, meta_target)
    logits, target, features = batch(2)
    weights = loss.batch_weights(features, target)
    assert weights.shape == target.shape and weights.mean() == pytest.approx(1.0)
    filled = loss.meta_filled.reshape(-1)
    meta = loss.meta_features.reshape(-1, 5)[filled].double()
    meta_labels = torch.arange(3).repeat_interleave(loss.meta_features.shape[1])[filled]
    cost = 0.5 * (1 - F.normalize(features.double(), dim=1) @ F.normalize(meta, dim=1).T)
    cost = cost + (target[:, None] != meta_labels[None]).double()
    uniform_meta = torch.full((meta.shape[0],), 1.0 / meta.shape[0], dtype=torch.float64)

    def distance(masses: torch.Tensor) -> float:
        return float(ot.sinkhorn2((masses / masses.sum()).numpy(), uniform_meta.numpy(), cost.numpy(), 0.1))

    initial = class_weights(COUNTS, "class_balanced")[target]
    assert distance(weights) < distance(initial)
    value = loss(logits, target, features)
    assert torch.isfinite(value)
    assert loss.last_weights is not None and loss.last_weights.shape == target.shape


def test_meta_set_validation_and_memory_round_trip() -> None:
    loss = build("ot_reweight", COUNTS)
    with pytest.raises(UsageError, match="classes \\[2\\]"):
        loss.set_meta_set(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    for seed in range(3):
        loss(*batch(seed))
    assert bool(loss.meta_filled.any(dim=1).all())
    restored = build("ot_reweight", COUNTS)
    restored.load_state_dict(loss.state_dict())
    assert torch.equal(restored.meta_features, loss.meta_features)
    logits, target, features = batch(9)
    restored.eval()
    loss.eval()
    assert float(restored(logits, target, features)) == pytest.approx(float(loss(logits, target, features)))
