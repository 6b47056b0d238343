"""Class-balanced and undersampling samplers with torch and torch-geometric DataLoaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader as GraphLoader

from matcard.errors import UsageError
from matcard.losses import ClassBalancedSampler, UnderSampler, labels_of

LABELS = np.array([0] * 90 + [1] * 8 + [2] * 2)


def test_class_balanced_sampler_draws_classes_equally() -> None:
    sampler = ClassBalancedSampler(LABELS, num_samples=6000, seed=1)
    drawn = LABELS[list(sampler)]
    shares = np.bincount(drawn, minlength=3) / drawn.size
    np.testing.assert_allclose(shares, [1 / 3] * 3, atol=0.03)
    assert len(sampler) == 6000
    # reproducible for a seed, different across epochs
    first = list(ClassBalancedSampler(LABELS, seed=5))
    assert first == list(ClassBalancedSampler(LABELS, seed=5))
    again = ClassBalancedSampler(LABELS, seed=5)
    assert list(again) != list(again)


def test_undersampler_takes_the_smallest_count_per_class_without_replacement() -> None:
    sampler = UnderSampler(LABELS, seed=0)
    epoch_one, epoch_two = list(sampler), list(sampler)
    for drawn in (epoch_one, epoch_two):
        assert len(drawn) == len(sampler) == 6
        assert len(set(drawn)) == 6
        assert np.bincount(LABELS[drawn], minlength=3).tolist() == [2, 2, 2]
    assert epoch_one != epoch_two
    with pytest.raises(UsageError, match="per_class"):
        UnderSampler(LABELS, per_class=3)


def test_samplers_feed_torch_and_torch_geometric_loaders() -> None:
    graphs = [
        Data(x=torch.randn(3, 4), edge_index=torch.tensor([[0, 1], [1, 2]]), y=torch.tensor([int(y)]))
        for y in LABELS
    ]
    labels = labels_of(graphs)
    assert labels.tolist() == LABELS.tolist()
    loader = GraphLoader(graphs, batch_size=10, sampler=ClassBalancedSampler(labels, num_samples=300, seed=0))
    seen = torch.cat([batch.y for batch in loader])
    assert seen.shape == (300,) and np.bincount(seen.numpy(), minlength=3).min() > 60
    tensors = TensorDataset(torch.randn(100, 2), torch.as_tensor(LABELS))
    assert labels_of(tensors).tolist() == LABELS.tolist()
    loader = DataLoader(tensors, batch_size=4, sampler=UnderSampler(LABELS, seed=0))
    assert torch.cat([y for _, y in loader]).bincount().tolist() == [2, 2, 2]


def test_bad_labels() -> None:
    with pytest.raises(UsageError):
        ClassBalancedSampler([])
    with pytest.raises(UsageError):
        UnderSampler([0.5, 1.0])
    with pytest.raises(UsageError, match="no label"):
        labels_of([Data(x=torch.zeros(1, 1))])
