from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from matcard.bundle import BUNDLE_FILE, WEIGHTS_FILE, load_model, save_bundle
from matcard.errors import MatcardError, UsageError
from matcard.featurize import GraphFeaturizer
from matcard.models import build_model


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, aflow_dataset):
    """A bundle of an untrained CGCNN (what a bundle stores does not depend on training)."""
    torch.manual_seed(0)
    featurizer = GraphFeaturizer(cutoff=6.0, max_neighbors=8)
    model = build_model("cgcnn", featurizer.node_dim, 7, cutoff=6.0, n_conv=2)
    task = aflow_dataset.task("crystal_system")
    directory = tmp_path_factory.mktemp("bundle") / "model"
    save_bundle(
        directory,
        model,
        model_name="cgcnn",
        model_params={"cutoff": 6.0, "n_conv": 2},
        in_dim=featurizer.node_dim,
        featurizer_config=featurizer.config.model_dump(mode="json"),
        class_names=aflow_dataset.labels(task).class_names,
        class_counts=[4, 22, 61, 56, 37, 42, 66],
        task=task,
        training_stats={"elements": {"O": 3}, "n_atoms": {"min": 1, "max": 105}},
        provenance={"dataset": "aflow-prototypes"},
    )
    return directory, model


def test_bundle_restores_everything_without_the_original_config(bundle_dir, aflow_dataset):
    directory, original = bundle_dir
    restored = load_model(directory)
    assert restored.class_names == aflow_dataset.labels("crystal_system").class_names
    assert restored.featurizer.config.cutoff == 6.0 and restored.featurizer.config.max_neighbors == 8
    assert getattr(restored.task, "name", None) == "crystal_system"  # a Task object again
    assert restored.training_stats["n_atoms"] == {"min": 1, "max": 105}
    assert restored.class_counts[0] == 4
    info = json.loads((directory / BUNDLE_FILE).read_text())
    assert info["matcard_version"] and info["model"]["name"] == "cgcnn"
    for key, value in original.state_dict().items():
        assert torch.equal(value, restored.model.state_dict()[key])


def test_predict_returns_a_table_of_classes_and_probabilities(bundle_dir, aflow_dataset):
    restored = load_model(directory := bundle_dir[0])
    records = aflow_dataset.records()[:5]
    frame = restored.predict(records)
    prob_columns = [f"prob_{name}" for name in restored.class_names]
    assert list(frame.columns) == ["id", "predicted_class", *prob_columns, "error"]
    assert frame["id"].tolist() == [r.id for r in records]
    np.testing.assert_allclose(frame[prob_columns].sum(axis=1), 1.0, atol=1e-5)
    best = frame[prob_columns].to_numpy().argmax(1)
    assert frame["predicted_class"].tolist() == [restored.class_names[i] for i in best]
    # same numbers through the screening entry point, and from the run directory's parent path
    graphs = [restored.featurizer(r.structure) for r in records]
    np.testing.assert_allclose(restored.predict_proba_data(graphs), frame[prob_columns].to_numpy(), atol=1e-6)
    assert load_model(directory.parent).class_names == restored.class_names


def test_bad_items_are_reported_per_row(bundle_dir, aflow_dataset, shared_data):
    from pymatgen.core import Lattice, Structure

    restored = load_model(bundle_dir[0])
    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0, 0, 0.001]])
    frame = restored.predict([aflow_dataset.structure(0), overlapping])
    assert frame["error"].iloc[0] is None
    assert "apart" in frame["error"].iloc[1] and frame["predicted_class"].iloc[1] is None
    assert np.isnan(frame.filter(like="prob_").iloc[1]).all()
    # files and folders are read with matcard's readers, one row per structure
    folder = restored.predict(shared_data / "cgcnn_sample_classification")
    assert len(folder) == 10 and folder["error"].isna().all()


def test_missing_and_damaged_bundles_fail_clearly(bundle_dir, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_model(tmp_path / "nothing")
    with pytest.raises(UsageError, match=BUNDLE_FILE):
        load_model(tmp_path)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / BUNDLE_FILE).write_text((bundle_dir[0] / BUNDLE_FILE).read_text())
    (damaged / WEIGHTS_FILE).write_bytes(b"not a torch file")
    with pytest.raises(MatcardError, match="cannot read weights"):
        load_model(damaged)
    info = json.loads((bundle_dir[0] / BUNDLE_FILE).read_text())
    info["format"] = 99
    (damaged / BUNDLE_FILE).write_text(json.dumps(info))
    with pytest.raises(MatcardError, match="newer matcard"):
        load_model(damaged)
