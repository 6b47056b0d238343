"""The angle-aware (ALIGNN-style) model on real crystal graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch

from matcard.featurize import GraphFeaturizer
from matcard.models import build_model
from matcard.models.alignn import bond_cosines, line_graph_triplets


def _rotated(structure: Structure, seed: int) -> Structure:
    """The same crystal, rigidly rotated in space (lattice and Cartesian coordinates)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = q * np.sign(np.diag(r))
    if np.linalg.det(rotation) < 0:
        rotation[:, 0] *= -1
    lattice = Lattice(structure.lattice.matrix @ rotation.T)
    return Structure(lattice, structure.species, structure.frac_coords)


def _permuted(structure: Structure, seed: int) -> Structure:
    order = np.random.default_rng(seed).permutation(len(structure))
    return Structure(structure.lattice, [structure.species[i] for i in order], structure.frac_coords[order])


def test_line_graph_pairs_bonds_through_their_shared_atom_with_true_angles(aflow_graphs):
    graphs, _, _ = aflow_graphs
    batch = Batch.from_data_list(graphs[:6])
    triplets = line_graph_triplets(batch.edge_index, batch.edge_vec, batch.num_nodes)
    a, b = triplets
    assert triplets.shape[1] > 0
    assert torch.equal(batch.edge_index[1][a], batch.edge_index[0][b])  # i->j then j->k
    cos = bond_cosines(batch.edge_vec, triplets)
    # the law of cosines on the three distances gives the same angle at j
    d_ij, d_jk = batch.edge_dist[a], batch.edge_dist[b]
    d_ik = (batch.edge_vec[a] + batch.edge_vec[b]).norm(dim=1)
    expected = (d_ij**2 + d_jk**2 - d_ik**2) / (2 * d_ij * d_jk)
    assert torch.allclose(cos, expected.clamp(-1, 1), atol=1e-4)
    assert ((batch.edge_vec[a] + batch.edge_vec[b]).norm(dim=1) > 1e-4).all()  # no walk straight back


def test_invariant_to_rotation_and_atom_order(mp20_structures):
    featurizer = GraphFeaturizer()
    torch.manual_seed(0)
    model = build_model("alignn", featurizer.node_dim, 3).eval()
    for structure in mp20_structures[:4]:
        variants = [structure, _rotated(structure, 1), _permuted(structure, 2)]
        batch = Batch.from_data_list([featurizer(s) for s in variants])
        with torch.no_grad():
            logits, embedding = model(batch)
        assert torch.allclose(logits[0], logits[1], atol=1e-4)
        assert torch.allclose(logits[0], logits[2], atol=1e-4)
        assert embedding.shape == (3, model.embedding_dim)


def test_gradients_reach_every_parameter_and_it_learns_real_graphs(aflow_graphs):
    graphs, node_dim, n_classes = aflow_graphs
    torch.manual_seed(0)
    model = build_model("alignn", node_dim, n_classes, hidden=32)
    batch = Batch.from_data_list(graphs[:16])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(25):
        logits, _ = model(batch)
        loss = torch.nn.functional.cross_entropy(logits, batch.y)
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not missing, missing  # angles (line graph) included
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_graphs_without_bond_vectors_are_a_clear_error(aflow_graphs):
    graphs, node_dim, n_classes = aflow_graphs
    stale = graphs[0].clone()
    del stale.edge_vec
    model = build_model("alignn", node_dim, n_classes)
    with pytest.raises(ValueError, match="edge_vec"):
        model(Batch.from_data_list([stale]))
