from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from matcard.bundle import BUNDLE_FILE, WEIGHTS_FILE, NoDecisionLayerWarning, load_model, save_bundle
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
    with pytest.warns(NoDecisionLayerWarning):  # written without a decision layer: argmax, flagged
        frame = restored.predict(records)
    prob_columns = [f"prob_{name}" for name in restored.class_names]
    assert list(frame.columns) == ["id", "predicted_class", "argmax_class", *prob_columns, "error", "detail"]
    assert frame.attrs["decision"] == "argmax (no decision layer)"
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
    with pytest.raises(MatcardError, match=r"cannot read .*weights\.pt: the file is truncated"):
        load_model(damaged)
    info = json.loads((bundle_dir[0] / BUNDLE_FILE).read_text())
    info["format"] = 99
    (damaged / BUNDLE_FILE).write_text(json.dumps(info))
    with pytest.raises(MatcardError, match="newer matcard"):
        load_model(damaged)


# --- checked bundles ---------------------------------------------------------------------------
def _copy(bundle_dir, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(bundle_dir[0], target)
    return target


def _edit(directory, change):
    info = json.loads((directory / BUNDLE_FILE).read_text())
    change(info)
    (directory / BUNDLE_FILE).write_text(json.dumps(info, indent=2))


def _make_legacy(directory):
    """What a bundle written before checksums looks like: format 1, no files / checksums."""

    def strip(info):
        info["format"] = 1
        info.pop("files")
        info.pop("checksums")

    _edit(directory, strip)


def test_bundle_records_the_sha256_of_its_weights_and_settings(bundle_dir):
    from matcard.fileio import sha256_file

    info = json.loads((bundle_dir[0] / BUNDLE_FILE).read_text())
    weights = bundle_dir[0] / WEIGHTS_FILE
    assert info["format"] == 2
    assert info["files"][WEIGHTS_FILE] == {"sha256": sha256_file(weights), "size": weights.stat().st_size}
    assert {"model", "featurizer", "class_names", "task", "training_stats", "files"} <= set(info["checksums"])
    assert load_model(bundle_dir[0]).verified


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _set_cutoff(info):
    info["featurizer"]["cutoff"] = 12.0


def _reverse_classes(info):
    info["class_names"].reverse()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda info: info.pop("model"), "model"),
        (lambda info: info.update(format="abc"), "format"),
        (lambda info: info.update(class_names="cubic"), "class_names"),
        (lambda info: info["model"].pop("in_dim"), "model.in_dim"),
        (lambda info: info.update(class_counts=[1, 2]), "class_counts"),
        (_set_cutoff, "featurizer"),
        (_reverse_classes, "class_names"),
        (lambda info: info["model"]["params"].update(n_conv=3), "model"),
        (lambda info: info.pop("checksums"), "checksums"),
    ],
    ids=[
        "no-model",
        "format-abc",
        "names-not-a-list",
        "no-in-dim",
        "counts",
        "cutoff",
        "reversed",
        "params",
        "no-checksums",
    ],
)
def test_invalid_or_edited_bundle_json_fails_naming_the_field(bundle_dir, tmp_path, change, field):
    from matcard.errors import BundleError

    directory = _copy(bundle_dir, tmp_path)
    _edit(directory, change)
    with pytest.raises(BundleError, match=f"'{field}'") as caught:
        load_model(directory)
    assert caught.value.field == field and caught.value.exit_code == 1


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda path: path.write_bytes(b""), "the file is empty \\(0 bytes; expected"),
        (lambda path: path.write_bytes(path.read_bytes()[:-100]), "truncated"),
        (lambda path: _flip_byte(path), "checksum mismatch"),
        (lambda path: path.unlink(), "weights.pt is missing"),
    ],
    ids=["empty", "truncated", "flipped-byte", "missing"],
)
def test_damaged_weights_say_what_is_wrong(bundle_dir, tmp_path, damage, message):
    from matcard.errors import BundleError

    directory = _copy(bundle_dir, tmp_path)
    damage(directory / WEIGHTS_FILE)
    with pytest.raises(BundleError, match=message):
        load_model(directory)


def test_weights_of_another_model_at_the_same_path_are_refused(bundle_dir, tmp_path):
    from matcard.errors import BundleError

    directory = _copy(bundle_dir, tmp_path)
    other = {k: v + 1.0 if v.is_floating_point() else v for k, v in bundle_dir[1].state_dict().items()}
    torch.save(other, directory / WEIGHTS_FILE)
    with pytest.raises(BundleError, match="replaced"):
        load_model(directory)


def test_old_bundles_without_checksums_load_with_a_warning_and_can_be_upgraded(bundle_dir, tmp_path):
    from matcard.bundle import UnverifiedBundleWarning, add_checksums
    from matcard.errors import BundleError

    directory = _copy(bundle_dir, tmp_path)
    _make_legacy(directory)
    with pytest.warns(UnverifiedBundleWarning, match="no checksums"):
        legacy = load_model(directory)
    assert not legacy.verified and legacy.class_names == load_model(bundle_dir[0]).class_names
    add_checksums(directory)
    assert load_model(directory).verified
    _edit(directory, _set_cutoff)
    with pytest.raises(BundleError, match="'featurizer'"):
        load_model(directory)


def test_old_bundle_with_bad_settings_or_an_empty_file_fails_naming_it(bundle_dir, tmp_path):
    from matcard.errors import BundleError

    directory = _copy(bundle_dir, tmp_path)
    _make_legacy(directory)
    _edit(directory, lambda info: info["model"].update(name="no-such-architecture"))
    with pytest.warns(UserWarning), pytest.raises(BundleError, match=r"model\.name") as caught:
        load_model(directory)
    assert caught.value.exit_code == 1
    _edit(directory, lambda info: info["model"].update(name="cgcnn"))
    _edit(directory, lambda info: info["featurizer"].update(cutoff="far"))
    with pytest.warns(UserWarning), pytest.raises(BundleError, match=r"featurizer\.cutoff"):
        load_model(directory)
    _edit(directory, _set_cutoff)
    (directory / WEIGHTS_FILE).write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(BundleError, match="empty"):
        load_model(directory)


class _Payload:
    """Not a tensor: unpickling it would run arbitrary code in a hostile file."""


def test_weights_are_loaded_with_weights_only(bundle_dir, tmp_path):
    """A weights.pt holding arbitrary pickled objects is refused, not executed."""
    from matcard.errors import BundleError

    directory = _copy(bundle_dir, tmp_path)
    _make_legacy(directory)
    torch.save({"payload": _Payload()}, directory / WEIGHTS_FILE)
    with pytest.warns(UserWarning), pytest.raises(BundleError, match="objects other than tensors"):
        load_model(directory)


def test_cli_reports_an_invalid_bundle_with_exit_1_and_the_field(bundle_dir, tmp_path, shared_data):
    from typer.testing import CliRunner

    from cli import app

    directory = _copy(bundle_dir, tmp_path)
    _edit(directory, lambda info: info.pop("model"))
    runner = CliRunner()
    evaluated = runner.invoke(app, ["evaluate", str(directory), "--dataset", "aflow-prototypes"])
    assert evaluated.exit_code == 1 and "'model'" in evaluated.stderr
    assert "Traceback" not in evaluated.output
    _edit(
        directory,
        lambda info: info.update(model=json.loads((bundle_dir[0] / BUNDLE_FILE).read_text())["model"]),
    )
    _edit(directory, _reverse_classes)
    screened = runner.invoke(
        app,
        [
            "screen",
            str(directory),
            str(shared_data / "alignn_sample_poscar"),
            "--out",
            str(tmp_path / "s.csv"),
        ],
    )
    assert screened.exit_code == 1 and "'class_names'" in screened.stderr
    assert not (tmp_path / "s.csv").exists()


# --- predict reports failures plainly -----------------------------------------------------------
def test_predict_names_a_missing_file_by_its_path(bundle_dir, tmp_path):
    restored = load_model(bundle_dir[0])
    missing = str(tmp_path / "nonexistent.cif")
    frame = restored.predict([missing, "/nonexistent.cif"])
    assert frame["id"].tolist() == [missing, "/nonexistent.cif"]
    assert frame["error"].tolist() == ["file not found", "file not found"]
    assert frame["predicted_class"].isna().all()


def test_featurize_failures_are_plain_sentences_with_the_raw_detail(bundle_dir, aflow_dataset):
    restored = load_model(bundle_dir[0])
    frame = restored.predict([aflow_dataset.structure(0), 42])
    assert frame["error"].iloc[0] is None and frame["detail"].iloc[0] is None
    reason, detail = frame["error"].iloc[1], frame["detail"].iloc[1]
    assert reason == "not a crystal structure this model can use"
    assert detail.startswith("AttributeError: ") or detail.startswith("TypeError: ")


def test_logits_do_not_depend_on_the_inference_batch(bundle_dir, aflow_dataset):
    """On a CPU the default forward pass takes CPU_INFERENCE_BATCH graphs at a time (cache-sized);
    the logits are those of one pass over everything, whatever the chunking, for Data and arrays."""
    from matcard.bundle import CPU_INFERENCE_BATCH
    from matcard.featurize.graph import StructureArrays

    restored = load_model(bundle_dir[0])
    structures = [r.structure for r in aflow_dataset.records()[: 2 * CPU_INFERENCE_BATCH + 5]]
    graphs = [restored.featurizer(s) for s in structures]
    whole = restored.predict_logits_data(graphs, batch_size=len(graphs))
    np.testing.assert_allclose(restored.predict_logits_data(graphs), whole, atol=1e-5)
    arrays = [restored.featurizer.build(StructureArrays.from_structure(s)) for s in structures]
    np.testing.assert_allclose(restored.predict_logits_data(arrays), whole, atol=1e-5)
