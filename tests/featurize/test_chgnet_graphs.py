"""CHGNet crystal graphs as model input: conversion with reasons, the cache, the batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matcard.errors import ConfigError
from matcard.featurize import featurizer_from_config
from matcard.featurize.chgnet_graphs import (
    ChgnetGraphFeaturizer,
    CrystalGraphBatch,
    crystal_graph_loader,
    crystal_graphs_for,
)
from matcard.featurize.graph import FeaturizationError

CALIFORNIUM = 27  # A_aP4_2_aci: Cf, beyond CHGNet's H..Pu


@pytest.fixture(scope="module")
def first_structures(aflow_dataset):
    return aflow_dataset.subset(range(30), name="aflow-first-30")


def test_structures_become_crystal_graphs_or_a_reason(aflow_dataset):
    featurizer = featurizer_from_config({"kind": "chgnet_graph"})
    assert isinstance(featurizer, ChgnetGraphFeaturizer)
    assert featurizer.config.model_version == "0.3.0" and featurizer.node_dim == 0
    structures = [aflow_dataset.structure(0), aflow_dataset.structure(CALIFORNIUM)]
    good, bad = featurizer.featurize_many(structures)
    assert good.atomic_number.tolist() == [site.specie.Z for site in structures[0]]
    assert isinstance(bad, FeaturizationError) and "Cf not supported by CHGNet" in str(bad)
    disordered = structures[0].copy()
    disordered.replace_species({disordered[0].specie: {disordered[0].specie: 0.5}})
    with pytest.raises(FeaturizationError, match="disordered structure"):
        featurizer(disordered)


def test_a_dataset_is_converted_once_then_read_from_the_cache(first_structures):
    featurizer = ChgnetGraphFeaturizer()
    graphs, positions, failures = crystal_graphs_for(first_structures, featurizer, cache=True, progress=False)
    assert CALIFORNIUM not in positions.tolist() and len(graphs) == len(positions) == 29
    assert (
        failures == [{"id": "A_aP4_2_aci", "stage": "featurize", "reason": failures[0]["reason"]}]
        and "Cf" in failures[0]["reason"]
    )
    cached = crystal_graphs_for(first_structures, featurizer, cache=True, progress=False)
    assert np.array_equal(cached[1], positions) and cached[2] == failures
    for mine, theirs in zip(graphs, cached[0], strict=True):
        assert torch.equal(mine.bond_graph, theirs.bond_graph) and mine.graph_id == theirs.graph_id


def test_a_damaged_cache_file_is_rebuilt(first_structures, session_data_dir):
    featurizer = ChgnetGraphFeaturizer()
    crystal_graphs_for(first_structures, featurizer, cache=True, progress=False)
    (path,) = (session_data_dir / "features").glob("aflow-first-30-chgnet_graph-*.pt")
    path.write_bytes(path.read_bytes()[:1000])
    graphs, _, _ = crystal_graphs_for(first_structures, featurizer, cache=True, progress=False)
    assert len(graphs) == 29 and path.stat().st_size > 1000


def test_graphs_built_by_another_chgnet_are_refused():
    with pytest.raises(ConfigError, match=r"featurizer\.chgnet_version.*0\.1\.0"):
        featurizer_from_config({"kind": "chgnet_graph", "chgnet_version": "0.1.0"})
    with pytest.raises(ConfigError, match=r"featurizer\.model_version.*'9\.9'"):
        featurizer_from_config({"kind": "chgnet_graph", "model_version": "9.9"})


def test_batches_are_a_list_of_graphs_with_their_labels(aflow_dataset):
    featurizer = ChgnetGraphFeaturizer()
    graphs = [featurizer(aflow_dataset.structure(i)) for i in range(5)]
    batches = list(crystal_graph_loader(graphs, [0, 1, 0, 1, 1], batch_size=2))
    assert [b.num_graphs for b in batches] == [2, 2, 1]
    assert isinstance(batches[0], CrystalGraphBatch) and batches[0].graphs == graphs[:2]
    assert torch.cat([b.y for b in batches]).tolist() == [0, 1, 0, 1, 1]
    moved = batches[0].to(torch.device("cpu"))
    assert moved.graphs[0].atomic_number.device.type == "cpu"
    unlabelled = next(iter(crystal_graph_loader(graphs, batch_size=8)))
    assert unlabelled.y.tolist() == [-1] * 5
