from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from matcard.errors import ConfigError
from matcard.featurize import featurizer_from_config
from matcard.featurize.elements import NODE_DIM, SEGMENTS, element_feature_table
from matcard.featurize.graph import FeaturizationError, GraphFeaturizer, edge_vectors

from .conftest import brute_force_neighbors


def _per_atom_distances(data, n_atoms: int) -> list[np.ndarray]:
    src = data.edge_index[0].numpy()
    dist = data.edge_dist.numpy().astype(float)
    return [np.sort(dist[src == i]) for i in range(n_atoms)]


@pytest.mark.parametrize("fixture", ["triclinic", "small_fcc"])
@pytest.mark.parametrize("cutoff", [5.0, 8.0])
def test_all_mode_matches_brute_force_enumeration(request, fixture: str, cutoff: float) -> None:
    structure: Structure = request.getfixturevalue(fixture)
    data = GraphFeaturizer(cutoff=cutoff, mode="all")(structure)
    expected = brute_force_neighbors(structure, cutoff)
    got = _per_atom_distances(data, len(structure))
    for atom, (e, g) in enumerate(zip(expected, got, strict=True)):
        assert len(g) == len(e), f"atom {atom}: {len(g)} neighbours, brute force {len(e)}"
        np.testing.assert_allclose(g, e, atol=1e-4)
    # the stored image offsets reproduce every edge length exactly
    vectors = edge_vectors(data, structure.lattice.matrix, structure.cart_coords)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), data.edge_dist.numpy(), atol=1e-4)


def test_cell_smaller_than_cutoff_has_self_images(small_fcc: Structure) -> None:
    assert max(small_fcc.lattice.abc) < 8.0
    data = GraphFeaturizer(mode="all")(small_fcc)
    src, dst = data.edge_index
    self_image = (src == dst) & (data.edge_offset.abs().sum(dim=1) > 0)
    assert self_image.any()  # an atom neighbours its own periodic images
    assert not ((src == dst) & (data.edge_offset.abs().sum(dim=1) == 0)).any()  # never itself


def test_nearest_mode_keeps_the_k_closest(triclinic: Structure) -> None:
    data = GraphFeaturizer()(triclinic)  # CGCNN defaults: 8 Å, 12 nearest
    expected = brute_force_neighbors(triclinic, 8.0)
    got = _per_atom_distances(data, len(triclinic))
    for e, g in zip(expected, got, strict=True):
        assert len(g) == min(12, len(e))
        np.testing.assert_allclose(g, e[: len(g)], atol=1e-4)


def test_contract_dtypes_and_shapes(small_fcc: Structure) -> None:
    featurizer = GraphFeaturizer()
    data = featurizer(small_fcc, y=3)
    n, e = len(small_fcc), data.edge_index.shape[1]
    assert data.x.dtype == torch.float32 and tuple(data.x.shape) == (n, featurizer.node_dim)
    assert data.z.dtype == torch.long and data.z.tolist() == list(small_fcc.atomic_numbers)
    assert data.edge_index.dtype == torch.long and data.edge_index.shape == (2, e)
    assert data.edge_dist.dtype == torch.float32 and data.edge_dist.shape == (e,)
    assert data.edge_offset.dtype == torch.long and data.edge_offset.shape == (e, 3)
    assert data.y.tolist() == [3] and data.y.dtype == torch.long
    atomic = GraphFeaturizer(node_features="atomic_number")
    assert atomic.node_dim == 0 and "x" not in atomic(small_fcc)


def test_bond_vectors_point_to_the_stored_image_and_survive_the_store(triclinic: Structure, tmp_path) -> None:
    from matcard.featurize import featurize_items

    data = GraphFeaturizer()(triclinic)
    assert data.edge_vec.dtype == torch.float32 and data.edge_vec.shape == (data.edge_index.shape[1], 3)
    expected = edge_vectors(data, triclinic.lattice.matrix, triclinic.cart_coords)  # from offsets
    np.testing.assert_allclose(data.edge_vec.numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(data.edge_vec.norm(dim=1).numpy(), data.edge_dist.numpy(), atol=1e-4)
    items = [("a", triclinic), ("b", triclinic)]
    report = featurize_items(items, "graph", out=tmp_path / "s", progress=False)
    stored = report.store.load()[1]
    assert torch.equal(stored.edge_vec, data.edge_vec)


def test_supercell_gives_each_atom_the_primitive_neighbour_distances(mp20_items) -> None:
    featurizer = GraphFeaturizer()
    checked = 0
    for _, primitive in mp20_items[:12]:
        supercell = primitive.make_supercell([2, 1, 2], in_place=False)
        prim_dist = _per_atom_distances(featurizer(primitive), len(primitive))
        super_dist = _per_atom_distances(featurizer(supercell), len(supercell))
        # map every supercell atom to the primitive atom at the same place modulo the primitive cell
        frac = primitive.lattice.get_fractional_coords(supercell.cart_coords)
        for atom, f in enumerate(frac):
            delta = (primitive.frac_coords - f + 0.5) % 1.0 - 0.5
            source = int(np.argmin(np.linalg.norm(delta @ primitive.lattice.matrix, axis=1)))
            np.testing.assert_allclose(super_dist[atom], prim_dist[source], atol=1e-4)
            checked += 1
    assert checked > 100


def test_isolated_atom_grows_the_cutoff_and_says_so() -> None:
    lone = Structure(Lattice.cubic(10.0), ["Xe"], [[0, 0, 0]])
    graph = GraphFeaturizer().build(lone)
    assert graph.cutoff_used >= 10.0 and graph.edge_dist.size > 0
    assert graph.flags == [f"cutoff_grown:8->{graph.cutoff_used:g}"]
    with pytest.warns(UserWarning, match="cutoff_grown"):
        GraphFeaturizer()(lone)
    with pytest.raises(FeaturizationError, match="no neighbour within 8 Å"):
        GraphFeaturizer(grow_cutoff=False).build(lone)
    with pytest.raises(FeaturizationError, match="no neighbour"):
        GraphFeaturizer(max_cutoff=9.0).build(lone)


def test_broken_structures_fail_with_a_reason() -> None:
    duplicated = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0, 0, 1e-12]])
    with pytest.raises(FeaturizationError, match="coincide"):
        GraphFeaturizer().build(duplicated)
    squeezed = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0, 0, 0.01]])
    with pytest.raises(FeaturizationError, match="overlapping"):
        GraphFeaturizer().build(squeezed)


def test_disordered_site_gets_occupancy_weighted_features() -> None:
    disordered = Structure(Lattice.cubic(3.0), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    graph = GraphFeaturizer().build(disordered)
    table = element_feature_table()
    np.testing.assert_allclose(graph.x[0], 0.5 * table[26] + 0.5 * table[28])
    assert "disordered_weighted_features" in graph.flags


def test_element_table_is_one_hot_per_property() -> None:
    table = element_feature_table()
    assert table.shape == (119, NODE_DIM)
    for segment in SEGMENTS:
        block = table[1:, segment.start : segment.stop]
        np.testing.assert_array_equal(block.sum(axis=1), 1.0)  # exactly one bin per property
    he = table[2]
    electronegativity = next(s for s in SEGMENTS if s.name == "electronegativity")
    assert he[electronegativity.stop - 1] == 1.0  # no Pauling value for He: the "missing" bin
    assert len({row.tobytes() for row in table[1:87]}) > 80  # elements are distinguishable


def test_config_round_trip_rebuilds_identical_graphs(triclinic: Structure) -> None:
    featurizer = GraphFeaturizer(cutoff=6.0, max_neighbors=8)
    rebuilt = featurizer_from_config(featurizer.config.model_dump())
    assert rebuilt == featurizer
    a, b = featurizer(triclinic), rebuilt(triclinic)
    for key in ("x", "z", "edge_index", "edge_dist", "edge_offset"):
        assert torch.equal(a[key], b[key])


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"cutoff": -1.0}, "featurizer.cutoff"),
        ({"max_neighbors": 0}, "featurizer.max_neighbors"),
        ({"mode": "knn"}, "featurizer.mode"),
        ({"cutof": 8.0}, "featurizer.cutof"),
        ({"kind": "voxel"}, "featurizer.kind"),
    ],
)
def test_invalid_config_names_the_field(config: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        featurizer_from_config(config)


def test_real_structures_all_featurize(mp20_items) -> None:
    featurizer = GraphFeaturizer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no grown cutoffs expected on dense MP cells
        for _, structure in mp20_items:
            data = featurizer(structure)
            counts = torch.bincount(data.edge_index[0], minlength=len(structure))
            assert counts.min() >= 1 and counts.max() <= 12


def test_nearest_shortcut_is_exact_against_the_full_cutoff_search(mp20_items, shared_data) -> None:
    """The small-probe shortcut of 'nearest' mode must give each atom exactly the 12 nearest of a
    full 8 Å search, on real cells (MP-20) and odd ones (molecular crystals, huge cells)."""
    from matcard.structures import read_structures

    odd = [r.structure for r in read_structures(shared_data / "messy_cifs").records]
    nearest, everything = GraphFeaturizer(), GraphFeaturizer(mode="all")
    for structure in [s for _, s in mp20_items] + odd:
        n = len(structure)
        got = _per_atom_distances(nearest(structure), n)
        full = _per_atom_distances(everything(structure), n)
        for g, f in zip(got, full, strict=True):
            np.testing.assert_allclose(g, f[:12], atol=1e-6)


def test_nearest_shortcut_falls_back_when_the_probe_is_too_small(monkeypatch) -> None:
    import matcard.featurize.graph as graph_module

    # a dense 3x3x3 cluster plus one atom in the empty half of the cell: the density-sized probe
    # holds no neighbour of the lone atom, so the full-cutoff search must run
    grid = [[0.12 * i, 0.12 * j, 0.12 * k] for i in range(3) for j in range(3) for k in range(3)]
    structure = Structure(Lattice.cubic(10.0), ["Cu"] * 27 + ["Au"], [*grid, [0.6, 0.6, 0.6]])
    radii: list[float] = []
    original = graph_module._neighbor_search
    monkeypatch.setattr(
        graph_module, "_neighbor_search", lambda arrays, r: radii.append(r) or original(arrays, r)
    )
    got = _per_atom_distances(GraphFeaturizer()(structure), len(structure))
    assert len(radii) == 2 and radii[0] < 8.0 == radii[1]  # probe, then the full search
    full = _per_atom_distances(GraphFeaturizer(mode="all")(structure), len(structure))
    for g, f in zip(got, full, strict=True):
        np.testing.assert_allclose(g, f[:12], atol=1e-6)


@pytest.mark.parametrize("node_features", ["cgcnn", "atomic_number"])
def test_batching_arrays_directly_equals_pyg_collate(mp20_items, node_features: str) -> None:
    """Screening batches the reader's graph arrays without a Data per graph: the same tensors as
    Batch.from_data_list over to_data(), and the same logits from every graph model."""
    from torch_geometric.data import Batch

    from matcard.featurize.graph import StructureArrays, batch_graph_arrays
    from matcard.models import build_model

    featurizer = GraphFeaturizer(node_features=node_features)
    arrays = [featurizer.build(StructureArrays.from_structure(s)) for _, s in mp20_items[:20]]
    ours = batch_graph_arrays(arrays)
    theirs = Batch.from_data_list([a.to_data() for a in arrays])
    assert ours.num_graphs == theirs.num_graphs == 20
    keys = {"z", "edge_index", "edge_dist", "edge_offset", "edge_vec", "batch", "ptr"}
    keys |= {"x"} if node_features == "cgcnn" else set()
    assert set(theirs.keys()) == keys | {"num_nodes"} and set(ours.keys()) == keys | {"num_nodes"}
    assert ours.num_nodes == theirs.num_nodes
    for key in keys:
        assert torch.equal(ours[key], theirs[key]), key
    torch.manual_seed(0)
    for name in ("cgcnn", "schnet", "alignn"):
        model = build_model(name, featurizer.node_dim, 3).eval()
        with torch.inference_mode():
            assert torch.equal(model(ours)[0], model(theirs)[0]), name


@pytest.mark.parametrize("node_features", ["cgcnn", "atomic_number"])
def test_graph_arrays_pickle_to_identical_writable_arrays(mp20_items, node_features: str) -> None:
    """The reader's hand-off form (two byte strings) unpickles to the same arrays, dtypes, shapes,
    cutoff and flags; arrays it cannot pack (other dtypes) still round-trip as they are."""
    import pickle

    from matcard.featurize.graph import GraphArrays, StructureArrays

    featurizer = GraphFeaturizer(node_features=node_features)
    disordered = Structure(Lattice.cubic(3.0), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    graphs = [featurizer.build(StructureArrays.from_structure(s)) for _, s in mp20_items[:10]]
    graphs.append(featurizer.build(disordered))
    odd = featurizer.build(StructureArrays.from_structure(mp20_items[0][1]))
    odd.edge_dist = odd.edge_dist.astype(np.float64)  # not the builder's dtype: default pickling
    odd.edge_vec = None
    for graph in [*graphs, odd]:
        wire = pickle.dumps(graph)
        again = pickle.loads(wire)
        assert isinstance(again, GraphArrays)
        assert again.cutoff_used == graph.cutoff_used and again.flags == graph.flags
        for name in ("x", "z", "edge_index", "edge_dist", "edge_offset", "edge_vec"):
            sent, received = getattr(graph, name), getattr(again, name)
            if sent is None:
                assert received is None, name
                continue
            assert received.dtype == sent.dtype and received.shape == sent.shape, name
            assert received.flags.writeable, name
            np.testing.assert_array_equal(received, sent)
    assert all(b"_graph_from_bytes" in pickle.dumps(graph) for graph in graphs)  # the packed form
    assert b"_graph_from_fields" in pickle.dumps(odd)
