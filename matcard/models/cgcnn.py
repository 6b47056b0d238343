"""CGCNN (Xie & Grossman 2018) on torch-geometric's CGConv, with the defaults of the original paper."""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.nn import CGConv

from matcard.models.layers import AtomInput, gaussian_expansion, message_edges, pooling


class CGCNN(nn.Module):
    """Crystal graph convolutional network.

    Defaults follow methods §7: distances expanded on Gaussians every 0.2 Å up to the 8 Å cutoff,
    3 convolutions on 64-wide atom features, a 128-wide hidden layer after mean pooling.
    ``forward`` returns ``(logits, embedding)``; the embedding is the pooled hidden representation
    the embedding-space losses use.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        atom_features: int = 64,
        hidden: int = 128,
        n_conv: int = 3,
        n_hidden_layers: int = 1,
        cutoff: float = 8.0,
        gaussian_step: float = 0.2,
        dropout: float = 0.0,
        pool: str = "mean",
    ) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        if n_conv < 1 or n_hidden_layers < 1:
            raise ValueError("n_conv and n_hidden_layers must be >= 1")
        self.atom_input = AtomInput(in_dim, atom_features)
        self.distance_expansion = gaussian_expansion(cutoff, gaussian_step)
        n_gaussians = self.distance_expansion.offset.numel()
        self.convs = nn.ModuleList(
            CGConv(atom_features, dim=n_gaussians, aggr="add", batch_norm=True) for _ in range(n_conv)
        )
        self.pool = pooling(pool)
        layers: list[nn.Module] = [nn.Linear(atom_features, hidden), nn.Softplus()]
        for _ in range(n_hidden_layers - 1):
            layers += [nn.Linear(hidden, hidden), nn.Softplus()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.head = nn.Sequential(*layers)
        self.classifier = nn.Linear(hidden, n_classes)
        self.embedding_dim = hidden

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.atom_input(batch)
        edge_index = message_edges(batch)
        edge_attr = self.distance_expansion(batch.edge_dist.float())
        for conv in self.convs:
            # CGConv already adds the residual; CGCNN applies softplus after each convolution.
            h = nn.functional.softplus(conv(h, edge_index, edge_attr))
        embedding = self.head(self.pool(h, batch.batch, size=batch.num_graphs))
        return self.classifier(embedding), embedding
