"""SchNet-style continuous-filter convolutions (Schütt et al. 2018) over the same periodic graphs.

torch-geometric's own ``SchNet`` model builds a non-periodic radius graph from positions, so it
cannot be used on crystals as is; its interaction blocks can, fed with the periodic edges and
image-aware distances the graph featurizer provides.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.nn.models.schnet import InteractionBlock, ShiftedSoftplus

from matcard.models.layers import AtomInput, gaussian_expansion, message_edges, pooling


class SchNet(nn.Module):
    """Continuous-filter convolutional network; ``forward`` returns ``(logits, embedding)``."""

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        hidden: int = 128,
        n_filters: int = 128,
        n_interactions: int = 3,
        cutoff: float = 8.0,
        gaussian_step: float = 0.2,
        dropout: float = 0.0,
        pool: str = "mean",
    ) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        if n_interactions < 1:
            raise ValueError("n_interactions must be >= 1")
        self.cutoff = float(cutoff)
        self.atom_input = AtomInput(in_dim, hidden)
        self.distance_expansion = gaussian_expansion(cutoff, gaussian_step)
        n_gaussians = self.distance_expansion.offset.numel()
        self.interactions = nn.ModuleList(
            InteractionBlock(hidden, n_gaussians, n_filters, self.cutoff) for _ in range(n_interactions)
        )
        self.pool = pooling(pool)
        layers: list[nn.Module] = [nn.Linear(hidden, hidden), ShiftedSoftplus()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.head = nn.Sequential(*layers)
        self.classifier = nn.Linear(hidden, n_classes)
        self.embedding_dim = hidden

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.atom_input(batch)
        edge_index = message_edges(batch)
        distance = batch.edge_dist.float()
        edge_attr = self.distance_expansion(distance)
        for interaction in self.interactions:
            h = h + interaction(h, edge_index, distance, edge_attr)
        embedding = self.head(self.pool(h, batch.batch, size=batch.num_graphs))
        return self.classifier(embedding), embedding
