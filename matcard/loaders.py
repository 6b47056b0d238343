"""DataLoaders for each kind of model input, so training, evaluation and bundles batch alike.

Most featurizers produce torch-geometric ``Data`` (labels inside, batched by PyG's loader); the
``chgnet_graph`` featurizer produces CHGNet ``CrystalGraph`` objects, batched as a list of graphs
plus a label tensor (``matcard.featurize.chgnet_graphs.CrystalGraphBatch``). Both batch kinds
expose ``y``, ``num_graphs`` and ``to(device)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def make_loader(
    featurizer_kind: str | None,
    graphs: Sequence[Any],
    y: Sequence[int] | np.ndarray | None = None,
    *,
    batch_size: int,
    shuffle: bool = False,
    sampler: Any = None,
    num_workers: int = 0,
) -> Any:
    """A DataLoader over ``graphs``. For ``Data`` inputs the labels travel inside each item and ``y``
    is ignored; CHGNet graphs carry none, so ``y`` (or -1 when None) is paired with them."""
    if featurizer_kind == "chgnet_graph":
        from matcard.featurize.chgnet_graphs import crystal_graph_loader

        return crystal_graph_loader(
            graphs, y, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=num_workers
        )
    from torch_geometric.loader import DataLoader

    return DataLoader(
        list(graphs),
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


__all__ = ["make_loader"]
