from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from matcard.datasets import load_dataset
from matcard.errors import UsageError
from matcard.featurize import CompositionFeaturizer, GraphFeaturizer, featurize_dataset


def _assert_same(a, b) -> None:
    for key in ("x", "z", "edge_index", "edge_dist", "edge_offset"):
        assert torch.allclose(a[key].double(), b[key].double(), atol=1e-5), key


def test_dataset_fast_path_equals_featurizing_the_structures(shared_data: Path, tmp_path: Path) -> None:
    """Graphs built straight from the dataset's flat arrays (no Structure objects) are the graphs
    the featurizer builds from the pymatgen structures, disordered sites included."""
    dataset = load_dataset(str(shared_data / "messy_cifs"), disorder="keep", progress=False)
    report = featurize_dataset(dataset, "graph", out=tmp_path / "g", jobs=1, progress=False)
    positions = report.store.positions()
    assert len(positions) == len(dataset) and not report.failures
    featurizer = GraphFeaturizer()
    for graph, position in zip(report.load(), positions, strict=True):
        _assert_same(graph, featurizer(dataset.structure(int(position))))
    assert report.summary()["flag_counts"].get("disordered_weighted_features", 0) >= 1


def test_labels_follow_input_positions(shared_data: Path, tmp_path: Path) -> None:
    dataset = load_dataset(str(shared_data / "cgcnn_sample_classification"), progress=False)
    report = featurize_dataset(dataset, "graph", task="label", out=tmp_path / "g", progress=False)
    expected = dataset.labels("label").y[report.store.positions()]
    assert [int(g.y) for g in report.load()] == expected.tolist()
    summary = report.summary()
    assert sum(summary["class_counts"].values()) == summary["count"]


def test_composition_of_a_structure_dataset(shared_data: Path, tmp_path: Path) -> None:
    dataset = load_dataset(str(shared_data / "cgcnn_sample_classification"), progress=False)
    report = featurize_dataset(dataset, "composition", out=tmp_path / "c", progress=False)
    matrix, positions = report.store.matrix()
    featurizer = CompositionFeaturizer()
    np.testing.assert_allclose(
        matrix[0], featurizer.features(dataset.structure(int(positions[0]))).astype(np.float32)
    )


def test_graphs_need_structures() -> None:
    with pytest.raises(UsageError, match="composition"):
        featurize_dataset("matbench-expt-is-metal", "graph", progress=False)
