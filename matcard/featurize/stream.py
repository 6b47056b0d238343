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
    """Stream a FeatureStore: shards spread over DataLoader workers, items over DDP ranks.

    Every rank walks the same (seeded) global order and keeps items ``rank, rank + W, ...``, so
    ranks get the same number of items (the short ones repeat their first item once, as
    ``DistributedSampler`` pads) and DDP never waits on a rank that ran out of batches. Within a
    rank, DataLoader workers take disjoint shards, so each shard is read by one worker per rank.
    """

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
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.store = store if isinstance(store, FeatureStore) else FeatureStore.read(store)
        self.labels = labels
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.keep = None if positions is None else np.unique(np.asarray(positions, dtype=np.int64))
        self.epoch = 0
        # kept item indices (within its shard) per shard, from the manifest: no shard is opened
        all_positions = self.store.positions()
        self._kept: dict[int, np.ndarray] = {}
        for index, info in self.store.shards.items():
            in_shard = all_positions[(all_positions >= info.start) & (all_positions < info.stop)]
            mask = np.ones(len(in_shard), bool) if self.keep is None else np.isin(in_shard, self.keep)
            self._kept[index] = np.flatnonzero(mask)

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffle order (call once per epoch, as with DistributedSampler)."""
        self.epoch = epoch

    def _total(self) -> int:
        return sum(len(v) for v in self._kept.values())

    def _per_rank(self) -> int:
        return -(-self._total() // self.world_size)

    def _plan(self) -> list[tuple[int, int, np.ndarray]]:
        """(shard, global offset of its first kept item, kept order within the shard), in epoch order."""
        shards = sorted(self._kept)
        if self.shuffle:
            np.random.default_rng((self.seed, self.epoch)).shuffle(shards)
        plan, offset = [], 0
        for index in shards:
            order = self._kept[index].copy()
            if self.shuffle:
                np.random.default_rng((self.seed, self.epoch, index)).shuffle(order)
            plan.append((index, offset, order))
            offset += len(order)
        return plan

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        plan = self._plan()
        first = None
        for slot, (index, offset, order) in enumerate(plan):
            global_index = offset + np.arange(len(order))
            mine = order[global_index % self.world_size == self.rank]
            if slot % n_workers != worker or len(mine) == 0:
                continue
            items = _split(self.store.load_shard(index), self.store.kind, self.labels)
            for i in mine:
                first = items[i] if first is None else first
                yield items[i]
        # pad a short rank (by one item) so every rank yields the same count; worker 0 does it
        deficit = self._per_rank() - len(range(self.rank, self._total(), self.world_size))
        if deficit and worker == 0:
            if first is None:  # this worker had no item of its own: the rank's first, else any
                for index, offset, order in plan:
                    mine = order[(offset + np.arange(len(order))) % self.world_size == self.rank]
                    pick = mine if len(mine) else order
                    if len(pick):
                        first = _split(self.store.load_shard(index), self.store.kind, self.labels)[pick[0]]
                        break
            if first is not None:
                yield first

    def __len__(self) -> int:
        """Items this rank yields per epoch (equal on every rank)."""
        return self._per_rank() if self._total() else 0


__all__ = ["ShardedGraphDataset"]
