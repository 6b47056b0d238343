"""magnitude_class_geometry: class weights from within-class embedding diversity, never from counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from matcard.errors import ConfigError, UsageError
from matcard.losses import build

GRID = torch.tensor([[x, y] for x in range(4) for y in range(4)], dtype=torch.float32)  # 16 points


def feed(loss, rows_by_class: dict[int, torch.Tensor], batches: int = 1) -> None:
    for _ in range(batches):
        embeddings = torch.cat(list(rows_by_class.values()))
        target = torch.cat([torch.full((len(rows),), c) for c, rows in rows_by_class.items()])
        loss(torch.zeros(len(target), 2, requires_grad=True), target, embeddings)


def test_equal_diversity_and_different_counts_give_equal_weights() -> None:
    loss = build("magnitude_class_geometry", [1000, 16], bank_size=32)
    # class 0 is seen ten times as often as class 1, but both are the same 16-point grid (translated)
    feed(loss, {0: GRID, 1: GRID + 10.0})
    feed(loss, {0: GRID}, batches=9)
    assert int(loss.bank_fill[0]) == 32 and int(loss.bank_fill[1]) == 16
    weights = loss.class_weight
    assert float(weights[0]) == pytest.approx(float(weights[1]), abs=1e-9)
    assert float(weights.mean()) == pytest.approx(1.0)


def test_a_more_diverse_class_gets_a_larger_weight() -> None:
    loss = build("magnitude_class_geometry", [16, 16], bank_size=16)
    clumped = GRID * 0.01 + 5.0  # same count, nearly one point
    feed(loss, {0: GRID, 1: clumped})
    assert float(loss.class_weight[0]) > 1.5 * float(loss.class_weight[1])
    # the weights multiply CE (embeddings are detached: no gradient reaches them)
    embeddings = torch.cat([GRID, clumped]).requires_grad_(True)
    target = torch.cat([torch.zeros(16), torch.ones(16)]).long()
    logits = torch.randn(32, 2, requires_grad=True)
    value = loss.eval()(logits, target, embeddings)
    expected = (loss.class_weight.float()[target] * F.cross_entropy(logits, target, reduction="none")).mean()
    assert float(value.detach()) == pytest.approx(float(expected.detach()))
    value.backward()
    assert embeddings.grad is None


def test_weights_checkpoint_and_report_realised_weights() -> None:
    loss = build("magnitude_class_geometry", [16, 16], bank_size=16)
    assert loss.uses_embeddings and loss.realised_class_weights() is None
    feed(loss, {0: GRID, 1: GRID * 0.01})
    realised = loss.realised_class_weights()
    assert realised == pytest.approx(loss.class_weight.tolist())  # one batch: weights applied once
    restored = build("magnitude_class_geometry", [16, 16], bank_size=16)
    restored.load_state_dict(loss.state_dict())
    assert torch.equal(restored.bank, loss.bank) and restored.realised_class_weights() == realised


def test_bad_parameters_and_missing_embeddings() -> None:
    for params in ({"bank_size": 1}, {"t": -1.0}, {"power": -1.0}, {"max_weight": 0.5}):
        with pytest.raises(ConfigError):
            build("magnitude_class_geometry", [5, 5], **params)
    with pytest.raises(UsageError, match="embeddings"):
        build("magnitude_class_geometry", [5, 5])(torch.zeros(3, 2), torch.tensor([0, 1, 0]))
