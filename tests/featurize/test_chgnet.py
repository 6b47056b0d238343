"""Frozen pretrained CHGNet features: the real chgnet package, its real 0.3.0 weights, real structures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from cli import app
from matcard.errors import ConfigError
from matcard.featurize import ChgnetFeaturizer, FeatureStore, featurize_items, featurizer_from_config
from matcard.featurize.chgnet import available_model_versions, load_chgnet

runner = CliRunner()


@pytest.fixture(scope="module")
def structures(mp20_items: list[tuple[str, Structure]]) -> list[tuple[str, Structure]]:
    return mp20_items[:12]


def _bad_items() -> list[tuple[str, Structure]]:
    isolated = Structure(Lattice.cubic(20.0), ["Na"], [[0, 0, 0]])  # nothing within 6 Å
    curium = Structure(Lattice.cubic(3.0), ["Cm"], [[0, 0, 0]])  # Z = 96: no CHGNet embedding
    disordered = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Co": 0.5}, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return [("isolated", isolated), ("curium", curium), ("disordered", disordered)]


def test_crystal_features_equal_chgnets_own_prediction(structures):
    featurizer = ChgnetFeaturizer()
    assert featurizer.node_dim == 64
    model = load_chgnet("0.3.0")
    reference = model.predict_structure([s for _, s in structures[:4]], task="e", return_crystal_feas=True)
    ours = featurizer.features_many([s for _, s in structures[:4]])
    for mine, theirs in zip(ours, reference, strict=True):
        np.testing.assert_allclose(mine, theirs["crystal_fea"], rtol=1e-5, atol=1e-5)


def test_batching_does_not_change_features_and_pooled_parts_are_consistent(structures):
    featurizer = ChgnetFeaturizer(pooling="crystal+atoms", batch_size=5)
    assert featurizer.node_dim == 320 and len(featurizer.feature_labels) == 320
    batched = np.stack(featurizer.features_many([s for _, s in structures]))
    alone = featurizer.features(structures[7][1])
    np.testing.assert_allclose(batched[7], alone, rtol=1e-5, atol=1e-5)
    # 0.3.0 sums the normalised last-layer atom features: the crystal part is n_atoms x their mean
    n_atoms = np.array([len(s) for _, s in structures], dtype=np.float32)
    np.testing.assert_allclose(batched[:, :64], batched[:, 64:128] * n_atoms[:, None], rtol=1e-4, atol=1e-4)
    assert (batched[:, 128:192] >= batched[:, 64:128] - 1e-6).all()  # max >= mean
    # mean / max parts are intensive: a 2x1x1 supercell gives the same, the crystal sum doubles
    supercell = structures[2][1].copy()
    supercell.make_supercell([2, 1, 1])
    bigger = featurizer.features(supercell)
    np.testing.assert_allclose(bigger[64:], batched[2, 64:], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(bigger[:64], 2 * batched[2, :64], rtol=1e-3, atol=1e-3)


def test_store_reports_per_structure_failures_and_is_served_from_cache(structures, tmp_path: Path):
    items = [*structures[:5], *_bad_items(), structures[5]]
    report = featurize_items(items, "chgnet", out=tmp_path / "s", progress=False)
    assert report.store.kind == "chgnet" and len(report.store) == 6
    reasons = {f.id: (f.position, f.reason) for f in report.failures}
    assert reasons["isolated"] == (5, "isolated atom(s): no neighbour within CHGNet's 6 Å")
    assert reasons["curium"][0] == 6 and "Cm not supported by CHGNet" in reasons["curium"][1]
    assert reasons["disordered"][0] == 7 and reasons["disordered"][1].startswith("disordered")
    matrix, positions = report.store.matrix()
    assert matrix.shape == (6, 64) and positions.tolist() == [0, 1, 2, 3, 4, 8]
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["featurizer"] == {"kind": "chgnet", "model_version": "0.3.0", "pooling": "crystal"}
    assert all(len(shard["sha256"]) == 64 for shard in manifest["shards"])
    again = featurize_items(items, "chgnet", out=tmp_path / "s", progress=False)
    assert again.from_cache and again.built == 0
    np.testing.assert_array_equal(FeatureStore.read(tmp_path / "s").matrix()[0], matrix)
    data = report.store.load(np.arange(len(items)))
    assert data[5].x.shape == (1, 64) and int(data[5].y) == 8  # label of input position 8


def test_model_version_is_pinned_checked_and_part_of_the_key(structures, tmp_path: Path):
    assert "0.3.0" in available_model_versions()
    with pytest.raises(ConfigError, match=r"featurizer\.model_version.*'9\.9\.9'.*installed chgnet 0\.4\.2"):
        featurizer_from_config({"kind": "chgnet", "model_version": "9.9.9"})
    with pytest.raises(ConfigError, match=r"featurizer\.pooling"):
        featurizer_from_config({"kind": "chgnet", "pooling": "median"})
    rebuilt = featurizer_from_config(ChgnetFeaturizer(pooling="crystal+atoms").config.model_dump())
    assert rebuilt == ChgnetFeaturizer(pooling="crystal+atoms")
    one = featurize_items(structures[:2], "chgnet", progress=False)
    two = featurize_items(structures[:2], {"kind": "chgnet", "pooling": "crystal+atoms"}, progress=False)
    assert one.store.key != two.store.key


def test_worker_processes_give_the_same_features(structures, tmp_path: Path):
    items = structures[:6]
    serial = featurize_items(items, "chgnet", out=tmp_path / "a", jobs=1, progress=False)
    parallel = featurize_items(items, "chgnet", out=tmp_path / "b", jobs=2, chunk_size=3, progress=False)
    np.testing.assert_allclose(serial.store.matrix()[0], parallel.store.matrix()[0], rtol=1e-5, atol=1e-5)


def test_cli_featurizes_a_folder_with_chgnet(shared_data: Path, tmp_path: Path):
    result = runner.invoke(
        app,
        ["featurize", str(shared_data / "cgcnn_sample_classification"), "--featurizer", "chgnet",
         "--pooling", "crystal+atoms", "--out", str(tmp_path / "f"), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # CHGNet's banner must not reach stdout
    assert summary["kind"] == "chgnet" and summary["n_features"] == 320
    assert summary["count"] + len(summary["failed_items"]) == summary["inputs"] == 10
    folder = str(shared_data / "cgcnn_sample_classification")
    bad = runner.invoke(app, ["featurize", folder, "--pooling", "crystal"])
    assert bad.exit_code == 2 and "--pooling" in bad.output
