"""Fine-tuning pretrained CHGNet under a matcard loss: forward / backward on real structures."""

from __future__ import annotations

import pytest
import torch

from matcard import losses
from matcard.featurize.chgnet import convert, load_chgnet
from matcard.models.chgnet_finetune import ChgnetFinetune


@pytest.fixture(scope="module")
def crystal_graphs(mp20_structures):
    model = load_chgnet("0.3.0")
    return [convert(model, s) for s in mp20_structures[:6]]


def test_only_the_last_blocks_train_and_the_pretrained_part_gets_a_lower_lr(crystal_graphs):
    torch.manual_seed(0)
    model = ChgnetFinetune(0, 3, train_blocks=1, pretrained_lr_multiplier=0.1)
    shared = load_chgnet("0.3.0")
    assert not any(p.requires_grad for p in shared.parameters())  # the featurizer's copy stays frozen
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    loss_fn = losses.build("weighted_ce", [2, 2, 2])
    logits, embedding = model(crystal_graphs)
    assert logits.shape == (6, 3) and embedding.shape == (6, model.embedding_dim)
    loss = loss_fn(logits, y)
    loss.backward()
    last = model.chgnet.atom_conv_layers[-1]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in last.parameters())
    first = model.chgnet.atom_conv_layers[0]
    assert all(p.grad is None and not p.requires_grad for p in first.parameters())
    assert all(p.grad is None for p in model.chgnet.atom_embedding.parameters())
    groups = model.param_groups(1e-3)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    optimizer = torch.optim.AdamW(groups)
    before = last.parameters().__next__().detach().clone()
    optimizer.step()
    assert not torch.equal(before, next(last.parameters()))


def test_head_only_fine_tuning_learns_a_real_batch(crystal_graphs):
    torch.manual_seed(0)
    model = ChgnetFinetune(0, 2, train_blocks=0)
    assert len(model.param_groups(1e-2)) == 1  # nothing pretrained is trained
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    optimizer = torch.optim.AdamW(model.param_groups(1e-2))
    first = last = None
    for _ in range(30):
        logits, _ = model(crystal_graphs)
        loss = torch.nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = loss.item() if first is None else first
        last = loss.item()
    assert last < 0.5 * first
