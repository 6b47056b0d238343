"""Stream a sharded FeatureStore into torch-geometric loaders without loading it all.

``ShardedGraphDataset`` is a ``torch.utils.data.IterableDataset``: it reads one shard at a time
(read whole, not memory-mapped, so a file changed on disk cannot crash a reader), optionally
shuffles shard order and items within a shard (a per-epoch seed), and splits shards across
DataLoader workers and distributed ranks so every item is seen exactly once per epoch.
Feed it to ``torch_geometric.loader.DataLoader(ds, batch_size=...)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from matcard.featurize.cache import FeatureStore, _split


class ShardedGraphDataset(IterableDataset):  # type: ignore[type-arg]
    def __init__(
        self,
        store: FeatureStore | str | Path,
        labels: np.ndarray | None = None,
        *,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        positions: np.ndarray | None = None,
    ) -> None:
        """``positions``: keep only items whose input position is listed (e.g. a train split)."""
        super().__init__()
        self.store = store if isinstance(store, FeatureStore) else FeatureStore.read(store)
        self.labels = labels
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.keep = None if positions is None else np.unique(np.asarray(positions, dtype=np.int64))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffle order (call once per epoch, as with DistributedSampler)."""
        self.epoch = epoch

    def _my_shards(self) -> list[int]:
        shards = sorted(self.store.shards)
        if self.shuffle:
            np.random.default_rng((self.seed, self.epoch)).shuffle(shards)
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        stride = self.world_size * n_workers
        return shards[self.rank * n_workers + worker :: stride]

    def __iter__(self) -> Iterator[Any]:
        for index in self._my_shards():
            shard = self.store.load_shard(index)
            items = _split(shard, self.store.kind, self.labels)
            order = np.arange(len(items))
            if self.keep is not None:
                positions = shard["position"].numpy()
                order = order[np.isin(positions, self.keep)]
            if self.shuffle:
                np.random.default_rng((self.seed, self.epoch, index)).shuffle(order)
            for i in order:
                yield items[i]

    def __len__(self) -> int:  # for progress bars; exact when rank/world_size split evenly
        if self.keep is None:
            return len(self.store)
        return int(np.isin(self.store.positions(), self.keep).sum())


__all__ = ["ShardedGraphDataset"]
