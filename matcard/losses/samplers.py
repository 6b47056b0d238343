"""Samplers for torch / torch-geometric DataLoaders (methods brief §3).

Both samplers take the training labels (one int per dataset item) and plug into
``torch.utils.data.DataLoader(dataset, sampler=...)`` or
``torch_geometric.loader.DataLoader(dataset, sampler=...)`` (do not also pass ``shuffle``).
:func:`labels_of` reads the labels out of a list of torch-geometric ``Data`` objects.

- :class:`ClassBalancedSampler`: draws with replacement, each class equally likely; an epoch
  has ``num_samples`` items [the dataset size].
- :class:`UnderSampler`: every epoch, a fresh random subset with the same number of items per
  class (``per_class`` [the smallest class count]), without replacement, shuffled.

Both are reproducible with ``seed`` and draw different subsets each epoch (call
``set_epoch(epoch)``, as for DistributedSampler, or just iterate again).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from matcard.errors import UsageError


def labels_of(dataset: Iterable[Any]) -> np.ndarray:
    """Integer labels of a dataset of torch-geometric ``Data`` items (their ``y``) or (x, y) pairs."""
    labels: list[int] = []
    for index, item in enumerate(dataset):
        y = getattr(item, "y", None)
        if y is None and isinstance(item, tuple | list) and len(item) >= 2:
            y = item[1]
        if y is None:
            raise UsageError(f"dataset item {index} has no label (y)")
        labels.append(int(torch.as_tensor(y).reshape(-1)[0]))
    return np.asarray(labels, dtype=np.int64)


def _as_labels(labels: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    array = array.reshape(-1)
    if array.size == 0:
        raise UsageError("a sampler needs at least one label")
    if not np.issubdtype(array.dtype, np.integer) or array.min() < 0:
        raise UsageError("labels must be non-negative integers")
    return array.astype(np.int64)


class _EpochSampler(Sampler[int]):
    def __init__(self, labels: Sequence[int] | np.ndarray | torch.Tensor, seed: int) -> None:
        self.labels = _as_labels(labels)
        self.classes, self.counts = np.unique(self.labels, return_counts=True)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _generator(self) -> np.random.Generator:
        generator = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1  # a plain re-iteration also gets a fresh draw
        return generator


class ClassBalancedSampler(_EpochSampler):
    """Class-balanced sampling with replacement: P(item) = 1 / (C n_{y_item})."""

    def __init__(
        self, labels: Sequence[int] | np.ndarray | torch.Tensor, num_samples: int | None = None, seed: int = 0
    ) -> None:
        super().__init__(labels, seed)
        self.num_samples = int(num_samples) if num_samples is not None else int(self.labels.size)
        if self.num_samples < 1:
            raise UsageError(f"num_samples must be >= 1, got {num_samples}")
        count_of = dict(zip(self.classes.tolist(), self.counts.tolist(), strict=True))
        weights = np.array([1.0 / count_of[y] for y in self.labels.tolist()])
        self.probabilities = weights / weights.sum()

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = self._generator()
        draws = generator.choice(self.labels.size, size=self.num_samples, replace=True, p=self.probabilities)
        return iter(draws.tolist())


class UnderSampler(_EpochSampler):
    """Random undersampling: ``per_class`` items of every class per epoch, without replacement."""

    def __init__(
        self, labels: Sequence[int] | np.ndarray | torch.Tensor, per_class: int | None = None, seed: int = 0
    ) -> None:
        super().__init__(labels, seed)
        smallest = int(self.counts.min())
        self.per_class = smallest if per_class is None else int(per_class)
        if not 1 <= self.per_class <= smallest:
            raise UsageError(
                f"per_class must lie in [1, {smallest}] (the smallest class count), got {per_class}"
            )
        self.members = [np.flatnonzero(self.labels == c) for c in self.classes]

    def __len__(self) -> int:
        return self.per_class * len(self.classes)

    def __iter__(self) -> Iterator[int]:
        generator = self._generator()
        chosen = np.concatenate(
            [generator.choice(m, size=self.per_class, replace=False) for m in self.members]
        )
        generator.shuffle(chosen)
        return iter(chosen.tolist())
