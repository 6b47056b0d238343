"""MLP over composition descriptors (one ``Data`` per material with ``x`` of shape [1, F])."""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.nn import MLP as PygMLP


class CompositionMLP(nn.Module):
    """Feed-forward classifier on descriptor vectors; ``forward`` returns ``(logits, embedding)``.

    Descriptors such as Magpie statistics span many orders of magnitude, so inputs are standardised
    with per-feature mean and std buffers that training fits on the training split
    (:meth:`fit_input_scaling`); they are saved with the weights, so a bundle needs nothing else.
    Non-finite descriptor entries are replaced by the training mean.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        hidden: int = 128,
        n_layers: int = 2,
        dropout: float = 0.1,
        norm: str | None = "layer_norm",
    ) -> None:
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"the composition MLP needs descriptor features (in_dim >= 1), got {in_dim}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        if n_layers < 1:
            raise ValueError("n_layers must be >= 1")
        self.in_dim = int(in_dim)
        self.register_buffer("feature_mean", torch.zeros(self.in_dim))
        self.register_buffer("feature_std", torch.ones(self.in_dim))
        self.body = PygMLP(
            [self.in_dim] + [hidden] * n_layers, dropout=dropout, norm=norm, plain_last=False, act="relu"
        )
        self.classifier = nn.Linear(hidden, n_classes)
        self.embedding_dim = hidden

    @torch.no_grad()
    def fit_input_scaling(self, features: torch.Tensor) -> None:
        """Set the standardisation buffers from the training features [N, F]."""
        features = features.double()
        finite = torch.isfinite(features)
        counts = finite.sum(0).clamp(min=1)
        filled = torch.where(finite, features, torch.zeros_like(features))
        mean = filled.sum(0) / counts
        var = (torch.where(finite, features - mean, torch.zeros_like(features)) ** 2).sum(0) / counts
        std = var.sqrt()
        std[std < 1e-8] = 1.0  # constant features carry no signal; avoid dividing by zero
        self.feature_mean.copy_(mean.float())
        self.feature_std.copy_(std.float())

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch.x.float()
        if x.dim() != 2 or x.size(1) != self.in_dim:
            raise ValueError(
                f"model expects descriptor features of width {self.in_dim}, got {tuple(x.shape)}"
            )
        x = torch.where(torch.isfinite(x), x, self.feature_mean.expand_as(x))
        embedding = self.body((x - self.feature_mean) / self.feature_std)
        return self.classifier(embedding), embedding
