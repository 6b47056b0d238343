from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from matcard.models import build_model
from matcard.models.cgcnn import CGCNN


def test_defaults_follow_methods_brief():
    model = CGCNN(100, 7)
    # Gaussians every 0.2 Å from 0 to the 8 Å cutoff
    offsets = model.distance_expansion.offset
    assert offsets.numel() == 41
    assert torch.allclose(offsets[1] - offsets[0], torch.tensor(0.2))
    assert float(offsets[-1]) == pytest.approx(8.0)
    assert len(model.convs) == 3
    assert model.atom_input.layer.out_features == 64
    assert model.embedding_dim == 128


def test_logits_and_embedding_shapes_on_real_graphs(aflow_graphs):
    graphs, node_dim, n_classes = aflow_graphs
    model = build_model("cgcnn", node_dim, n_classes).eval()
    logits, embedding = model(Batch.from_data_list(graphs[:10]))
    assert logits.shape == (10, n_classes)
    assert embedding.shape == (10, 128)
    assert torch.isfinite(logits).all()


def test_prediction_does_not_depend_on_batch_company_or_atom_order(aflow_graphs):
    graphs, node_dim, n_classes = aflow_graphs
    torch.manual_seed(0)
    model = build_model("cgcnn", node_dim, n_classes).eval()
    with torch.no_grad():
        batched, _ = model(Batch.from_data_list(graphs[:8]))
        alone, _ = model(Batch.from_data_list([graphs[3]]))
        assert torch.allclose(batched[3], alone[0], atol=1e-5)

        # relabel the atoms of one structure: a graph network must give the same answer
        graph = graphs[5].clone()
        n = graph.num_nodes
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(n)
        graph.x, graph.z = graph.x[perm], graph.z[perm]
        graph.edge_index = inverse[graph.edge_index]
        permuted, _ = model(Batch.from_data_list([graph]))
        original, _ = model(Batch.from_data_list([graphs[5]]))
    assert n > 1
    assert torch.allclose(permuted, original, atol=1e-5)


def test_messages_flow_from_neighbours_to_centre():
    """edge_index holds (centre, neighbour); the centre's state must depend on the neighbour's."""
    from torch_geometric.data import Data

    torch.manual_seed(0)
    model = build_model("cgcnn", 0, 2, n_conv=1).eval()
    # atom 0 lists atom 1 as its neighbour; atom 1 lists nobody
    base = dict(edge_index=torch.tensor([[0], [1]]), edge_dist=torch.tensor([2.0]), num_nodes=2)
    a = Data(z=torch.tensor([8, 26]), **base)
    b = Data(z=torch.tensor([8, 29]), **base)  # change only the neighbour's element
    conv = model.convs[0]
    with torch.no_grad():
        h_a = conv(
            model.atom_input(Batch.from_data_list([a])),
            torch.tensor([[1], [0]]),
            model.distance_expansion(torch.tensor([2.0])),
        )
        h_b = conv(
            model.atom_input(Batch.from_data_list([b])),
            torch.tensor([[1], [0]]),
            model.distance_expansion(torch.tensor([2.0])),
        )
        out_a, _ = model(Batch.from_data_list([a]))
        out_b, _ = model(Batch.from_data_list([b]))
    assert not torch.allclose(h_a[0], h_b[0])  # the centre saw its neighbour change
    assert not torch.allclose(out_a, out_b)


def test_atomic_number_embedding_mode(aflow_graphs):
    graphs, _, n_classes = aflow_graphs
    stripped = []
    for graph in graphs[:6]:
        graph = graph.clone()
        del graph.x
        stripped.append(graph)
    model = build_model("cgcnn", 0, n_classes)
    logits, _ = model(Batch.from_data_list(stripped))
    assert logits.shape == (6, n_classes)


def test_wrong_feature_width_is_a_clear_error(aflow_graphs):
    graphs, node_dim, n_classes = aflow_graphs
    model = build_model("cgcnn", node_dim + 3, n_classes)
    with pytest.raises(ValueError, match="width"):
        model(Batch.from_data_list(graphs[:2]))


def test_learns_a_small_real_batch(aflow_graphs):
    graphs, node_dim, n_classes = aflow_graphs
    torch.manual_seed(0)
    model = build_model("cgcnn", node_dim, n_classes)
    batch = Batch.from_data_list(graphs[:16])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        logits, _ = model(batch)
        loss = torch.nn.functional.cross_entropy(logits, batch.y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("train", [False, True])
def test_factored_convolution_equals_torch_geometric_cgconv(aflow_graphs, train):
    """Same parameters, same outputs and gradients as CGConv on real crystal graphs (both modes:
    batch norm uses batch statistics in training), and the state dicts are interchangeable."""
    from torch_geometric.nn import CGConv

    from matcard.models.cgcnn import FactoredCGConv
    from matcard.models.layers import message_edges

    graphs, node_dim, _ = aflow_graphs
    batch = Batch.from_data_list(graphs[:12])
    torch.manual_seed(0)
    model = CGCNN(node_dim, 3)
    # float64: batch norm's backward cancels large terms, and float32 would hide the comparison in noise
    x = model.atom_input(batch).detach().double()
    edge_index = message_edges(batch)
    edge_attr = model.distance_expansion(batch.edge_dist.float()).double()
    factored = FactoredCGConv(64, dim=edge_attr.size(1), aggr="add", batch_norm=True).double()
    reference = CGConv(64, dim=edge_attr.size(1), aggr="add", batch_norm=True).double()
    reference.load_state_dict(factored.state_dict())
    outputs = []
    for conv in (factored, reference):
        conv.train(train)
        inputs = x.clone().requires_grad_(True)
        out = conv(inputs, edge_index, edge_attr)
        (out.square().sum()).backward()
        outputs.append((out.detach(), inputs.grad, conv.lin_f.weight.grad, conv.lin_s.bias.grad))
    for ours, theirs in zip(*outputs, strict=True):  # the same sums in another order
        assert (ours - theirs).abs().max() <= 1e-9 * theirs.abs().max()
    assert outputs[0][0].abs().max() > 0.1  # a real signal, not two zero tensors


def test_blocked_edges_skip_the_centre_gather_with_identical_results(aflow_graphs, monkeypatch):
    """Edges grouped k per centre in atom order (the featurizer's nearest mode) add each centre's
    projection as a broadcast instead of a gather: the same floats, bit for bit, and the same
    gradients; any other edge order takes the gather."""
    import matcard.models.cgcnn as cgcnn_module
    from matcard.models.layers import message_edges

    graphs, node_dim, _ = aflow_graphs
    batch = Batch.from_data_list(graphs[:12])
    edge_index = message_edges(batch)
    assert cgcnn_module._edges_per_centre(edge_index[1], batch.num_nodes) == 12
    shuffled = edge_index[:, torch.randperm(edge_index.size(1), generator=torch.Generator().manual_seed(0))]
    assert cgcnn_module._edges_per_centre(shuffled[1], batch.num_nodes) == 0
    assert cgcnn_module._edges_per_centre(edge_index[1][:-1], batch.num_nodes) == 0

    torch.manual_seed(0)
    model = CGCNN(node_dim, 3)
    results = []
    for blocked in (True, False):
        if not blocked:
            monkeypatch.setattr(cgcnn_module, "_edges_per_centre", lambda centre, n_atoms: 0)
        model.zero_grad()
        logits, _ = model(batch)
        logits.square().sum().backward()
        results.append((logits.detach(), model.convs[0].lin_f.weight.grad.clone()))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
