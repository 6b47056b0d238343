"""An ALIGNN-style angle-aware GNN (Choudhary & DeCost 2021) on torch-geometric.

Bond angles enter through the line graph of the crystal graph: its nodes are the bonds
(edges i->j of the atom graph) and its edges the bond pairs (i->j, j->k) that share atom j,
carrying the cosine of the angle at j, expanded on Gaussians. Each ALIGNN block runs one
edge-gated convolution on the line graph (updating bond and triplet features) and one on the
atom graph (updating atom and bond features); plain edge-gated convolutions on the atom graph
follow, then mean pooling and a linear head. Bond vectors come from ``Data.edge_vec``
(lattice-aware, stored by the graph featurizer), so angles across periodic images are exact.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.models.schnet import GaussianSmearing
from torch_geometric.utils import scatter

from matcard.models.layers import AtomInput, message_edges, pooling


def line_graph_triplets(edge_index: torch.Tensor, edge_vec: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Bond pairs (a, b) with a = i->j and b = j->k sharing atom j, as a [2, T] tensor of edge ids.

    Vectorised: every bond a is paired with every bond leaving its end atom; the pair that walks
    straight back (b = the reverse of a, same periodic image) carries no angle and is dropped.
    """
    src, dst = edge_index
    n_edges = src.numel()
    if n_edges == 0:
        return edge_index.new_zeros((2, 0))
    order = torch.argsort(src, stable=True)  # bonds grouped by their start atom
    out_degree = torch.bincount(src, minlength=n_nodes)
    start = torch.cumsum(out_degree, 0) - out_degree
    per_a = out_degree[dst]
    a = torch.repeat_interleave(torch.arange(n_edges, device=src.device), per_a)
    first = torch.repeat_interleave(torch.cumsum(per_a, 0) - per_a, per_a)
    rank = torch.arange(a.numel(), device=src.device) - first
    b = order[start[dst[a]] + rank]
    keep = (edge_vec[a] + edge_vec[b]).norm(dim=1) > 1e-4
    return torch.stack((a[keep], b[keep]))


def bond_cosines(edge_vec: torch.Tensor, triplets: torch.Tensor) -> torch.Tensor:
    """cos of the angle at j between j->i and j->k for each pair (a = i->j, b = j->k)."""
    back = -edge_vec[triplets[0]]
    forward = edge_vec[triplets[1]]
    cos = (back * forward).sum(1) / (back.norm(dim=1) * forward.norm(dim=1)).clamp(min=1e-8)
    return cos.clamp(-1.0, 1.0)


class EdgeGatedConv(MessagePassing):
    """Edge-gated graph convolution (Bresson & Laurent; ALIGNN's form): updates nodes and edges.

    The gate of edge j->i is sigmoid(A h_i + B h_j + C e_ji); node i receives the gate-normalised
    sum of V h_j, edges get the pre-activation gate as their update; both with residuals. A last
    layer whose edge output nobody reads is built with ``update_edges=False`` (no dead weights).
    """

    def __init__(self, width: int, update_edges: bool = True) -> None:
        super().__init__(aggr="add")
        self.gate_dst, self.gate_src, self.gate_edge = (nn.Linear(width, width) for _ in range(3))
        self.self_update, self.neighbour_update = nn.Linear(width, width), nn.Linear(width, width)
        self.node_norm = nn.BatchNorm1d(width)
        self.edge_norm = nn.BatchNorm1d(width) if update_edges else None

    def forward(
        self, h: torch.Tensor, edge_index: torch.Tensor, e: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        src, dst = edge_index
        gate_logits = self.gate_dst(h)[dst] + self.gate_src(h)[src] + self.gate_edge(e)
        gate = torch.sigmoid(gate_logits)
        weighted = self.propagate(edge_index, x=self.neighbour_update(h), gate=gate)
        norm = scatter(gate, dst, dim=0, dim_size=h.size(0), reduce="sum")
        h_new = self.self_update(h) + weighted / (norm + 1e-6)
        h = h + nn.functional.silu(self.node_norm(h_new))
        if self.edge_norm is not None:
            e = e + nn.functional.silu(self.edge_norm(gate_logits))
        return h, e

    def message(self, x_j: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return gate * x_j


class ALIGNN(nn.Module):
    """Atomistic line graph neural network; ``forward`` returns ``(logits, pooled embedding)``."""

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        hidden: int = 64,
        n_alignn: int = 2,
        n_gcn: int = 2,
        cutoff: float = 8.0,
        n_distance: int = 40,
        n_angle: int = 20,
        dropout: float = 0.0,
        pool: str = "mean",
    ) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        if n_alignn < 0 or n_gcn < 0 or n_alignn + n_gcn < 1:
            raise ValueError("n_alignn and n_gcn must be >= 0, with at least one layer")
        if cutoff <= 0 or n_distance < 2 or n_angle < 2:
            raise ValueError("cutoff must be positive; n_distance and n_angle >= 2")
        self.atom_input = AtomInput(in_dim, hidden)
        self.distance_expansion = GaussianSmearing(0.0, cutoff, n_distance)
        self.angle_expansion = GaussianSmearing(-1.0, 1.0, n_angle)
        self.bond_input = nn.Sequential(nn.Linear(n_distance, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.angle_input = nn.Sequential(nn.Linear(n_angle, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        n_atom = n_alignn + n_gcn
        # the triplet features after the last line-graph layer, and the bond features after the last
        # atom layer, are never read: those layers update nodes only
        self.line_convs = nn.ModuleList(EdgeGatedConv(hidden, k < n_alignn - 1) for k in range(n_alignn))
        self.atom_convs = nn.ModuleList(EdgeGatedConv(hidden, k < n_atom - 1) for k in range(n_atom))
        self.pool = pooling(pool)
        head: list[nn.Module] = [nn.Linear(hidden, hidden), nn.SiLU()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        self.head = nn.Sequential(*head)
        self.classifier = nn.Linear(hidden, n_classes)
        self.embedding_dim = hidden

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        edge_vec = getattr(batch, "edge_vec", None)
        if edge_vec is None:
            raise ValueError(
                "alignn needs bond vectors (Data.edge_vec); featurize the graphs again with this matcard"
            )
        edge_vec = edge_vec.float()
        h = self.atom_input(batch)
        if len(self.line_convs):
            # line graph on the stored (centre -> neighbour) bonds, angles at the shared atom
            triplets = line_graph_triplets(batch.edge_index, edge_vec, h.size(0))
            t = self.angle_input(self.angle_expansion(bond_cosines(edge_vec, triplets)))
            line_edges = triplets.flip(0)  # bond j->k informs bond i->j, which then informs atom i
        e = self.bond_input(self.distance_expansion(batch.edge_dist.float()))
        atom_edges = message_edges(batch)  # neighbour -> centre, aggregated on the centre
        for index, atom_conv in enumerate(self.atom_convs):
            if index < len(self.line_convs):
                e, t = self.line_convs[index](e, line_edges, t)
            h, e = atom_conv(h, atom_edges, e)
        embedding = self.head(self.pool(h, batch.batch, size=batch.num_graphs))
        return self.classifier(embedding), embedding
