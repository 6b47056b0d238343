from __future__ import annotations

import torch
from torch_geometric.data import Batch

from matcard.models import build_model


def test_shapes_and_gradients_on_real_graphs(aflow_graphs):
    graphs, node_dim, n_classes = aflow_graphs
    torch.manual_seed(0)
    model = build_model("schnet", node_dim, n_classes, hidden=32, n_filters=32)
    batch = Batch.from_data_list(graphs[:8])
    logits, embedding = model(batch)
    assert logits.shape == (8, n_classes)
    assert embedding.shape == (8, 32)
    torch.nn.functional.cross_entropy(logits, batch.y).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_neighbours_beyond_the_cutoff_do_not_contribute():
    """The cosine envelope removes edges at the cutoff: moving such an edge changes nothing."""
    from torch_geometric.data import Data

    torch.manual_seed(0)
    model = build_model("schnet", 0, 2, hidden=16, n_filters=16, cutoff=5.0).eval()

    def graph(far_distance: float) -> Data:
        return Data(
            z=torch.tensor([8, 26, 29]),
            edge_index=torch.tensor([[0, 0], [1, 2]]),
            edge_dist=torch.tensor([2.0, far_distance]),
            num_nodes=3,
        )

    with torch.no_grad():
        at_cutoff, _ = model(Batch.from_data_list([graph(5.0)]))
        near, _ = model(Batch.from_data_list([graph(3.0)]))
        without, _ = model(
            Batch.from_data_list(
                [
                    Data(
                        z=torch.tensor([8, 26, 29]),
                        edge_index=torch.tensor([[0], [1]]),
                        edge_dist=torch.tensor([2.0]),
                        num_nodes=3,
                    )
                ]
            )
        )
    assert torch.allclose(at_cutoff, without, atol=1e-6)
    assert not torch.allclose(near, without, atol=1e-6)


def test_atom_order_invariance(aflow_graphs):
    graphs, node_dim, n_classes = aflow_graphs
    torch.manual_seed(0)
    model = build_model("schnet", node_dim, n_classes, hidden=32, n_filters=32).eval()
    graph = graphs[7].clone()
    perm = torch.randperm(graph.num_nodes, generator=torch.Generator().manual_seed(2))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(graph.num_nodes)
    graph.x, graph.z = graph.x[perm], graph.z[perm]
    graph.edge_index = inverse[graph.edge_index]
    with torch.no_grad():
        a, _ = model(Batch.from_data_list([graph]))
        b, _ = model(Batch.from_data_list([graphs[7]]))
    assert torch.allclose(a, b, atol=1e-5)
