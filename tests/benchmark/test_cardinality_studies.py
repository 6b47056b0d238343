"""The shipped cardinality studies and the reference-form entries of the standard comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

from matcard import benchmark
from matcard.benchmark import BenchmarkConfig
from matcard.config import read_yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "benchmarks"
# study -> (the existing study whose data / model / split it shares, seeds, train changes it documents)
STUDIES = {
    "cardinality_glass": ("glass_tg", 5, {}),
    "cardinality_perov5": ("perov5_gapped", 10, {"epochs": 12, "patience": 6}),
    "cardinality_mp20": ("mp20_crystal_system", 5, {}),
}
CONTROLS = {
    "magnitude_control": "magnitude",
    "spread_control": "spread",
    "magnitude_class_geometry_control": "magnitude_class_geometry",
}


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_cardinality_studies_share_the_existing_studies_settings(name):
    source, n_seeds, trainer_changes = STUDIES[name]
    tree = read_yaml(CONFIGS / f"{name}.yaml")
    study = BenchmarkConfig.model_validate(tree)  # the schema; the new loss modes land separately
    original = read_yaml(CONFIGS / f"{source}.yaml")
    assert study.name == name
    expected = dict(original["train"])
    expected["trainer"] = {**original["train"]["trainer"], **trainer_changes}
    assert study.train == expected
    assert study.seeds == list(range(n_seeds))  # seeds 0-2: the existing study's splits
    entries = {entry.label: entry for entry in study.losses}
    assert {e: entries[e].control_for for e in CONTROLS} == CONTROLS
    assert all(entries[e].loss == "weighted_ce" for e in CONTROLS)
    assert (entries["magnitude"].params, entries["spread"].params) == ({}, {})  # the default forms
    assert entries["magnitude_reference_warmup"].params == {"mode": "add", "warmup_epochs": 3}
    # every entry named magnitude*/spread* that is not a control is a default form or names the reference
    for label, entry in entries.items():
        if label.startswith(("magnitude", "spread")) and entry.control_for is None and entry.params:
            assert "reference" in label, label
    assert entries["magnitude_reference"].params == {"mode": "replace"}
    assert {"ce", "weighted_ce", "magnitude_class_geometry"} <= set(entries)
    assert study.baseline == "ce"


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_todays_entries_of_a_cardinality_study_plan(name):
    today = "ce,weighted_ce,magnitude_reference"
    study = benchmark.study_from_options(CONFIGS / f"{name}.yaml", losses=today)
    assert [entry.label for entry in study.losses] == ["ce", "weighted_ce", "magnitude_reference"]
    cells = benchmark.plan_cells(study, Path("x"))
    assert len(cells) == 3 * len(study.seeds)
    reference = next(c for c in cells if c.label == "magnitude_reference")
    assert reference.settings["loss"] == {"name": "magnitude", "params": {"mode": "replace"}}


def test_selecting_a_control_keeps_its_entry():
    tree = read_yaml(CONFIGS / "cardinality_glass.yaml")
    study = benchmark.select_losses(BenchmarkConfig.model_validate(tree), ["spread_control"])
    assert [entry.label for entry in study.losses] == ["ce", "spread", "spread_control"]


def test_standard_reference_forms_say_their_mode():
    entries = {entry["label"]: entry for entry in benchmark.STANDARD_ENTRIES}
    assert entries["magnitude_reference"]["params"] == {"mode": "replace"}
    assert entries["spread_reference"]["params"] == {"mode": "replace"}
    for label, entry in entries.items():  # no magnitude / spread entry leans on the loss's default mode
        if entry["loss"] in ("magnitude", "spread"):
            assert "mode" in entry.get("params", {}), label


def _cell_key(losses, label):
    study = benchmark.load_benchmark_config(
        overrides={"name": "k", "train": {"data": {"dataset": "aflow-prototypes"}}, "losses": ["ce", *losses]}
    )
    return next(c.key for c in benchmark.plan_cells(study, Path("x")) if c.label == label)


def test_a_plain_magnitude_cell_key_follows_the_losss_default_mode():
    from matcard.benchmark.planning import _default_mode_keyed

    # the default mode is "weight": it is part of a plain entry's key, so a cell trained when the
    # default was the reference replace form (keyed without a mode) is never reused as the new default
    assert _default_mode_keyed("magnitude", {}) == {"mode": "weight", "t": 100.0}
    assert _default_mode_keyed("magnitude", {"t": 20}) == {"t": 20, "mode": "weight"}
    assert _default_mode_keyed("magnitude", {"mode": "replace"}) == {"mode": "replace"}
    assert _default_mode_keyed("spread", {"source": "embeddings"}) == {"source": "embeddings"}
    plain = {"label": "magnitude", "loss": "magnitude"}
    explicit = {"label": "magnitude", "loss": "magnitude", "params": {"mode": "replace"}}
    weight = {"label": "magnitude", "loss": "magnitude", "params": {"mode": "weight"}}
    assert _cell_key([plain], "magnitude") != _cell_key([explicit], "magnitude")
    assert _cell_key([plain], "magnitude") == _cell_key([weight], "magnitude")
    # cells keyed when the weight mode's default scale was 20 are not reused for t = 100
    old_default = {"label": "magnitude", "loss": "magnitude", "params": {"mode": "weight", "t": 20}}
    assert _cell_key([plain], "magnitude") != _cell_key([old_default], "magnitude")
    assert _default_mode_keyed("magnitude", {"mode": "weight", "t": 20}) == {"mode": "weight", "t": 20}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_cardinality_entry_is_a_safe_default_or_names_the_reference(path):
    """A row called magnitude*/spread* either runs the loss's safe default (the weighting form, which
    does not collapse) or says in its name that it is a reference form, which may."""
    study = benchmark.load_benchmark_config(path)
    for entry in study.losses:
        if entry.label.startswith(("magnitude", "spread")) and entry.control_for is None:
            mode = entry.params.get("mode", "weight")
            assert mode == "weight" or "reference" in entry.label, (entry.label, mode)


# representation study -> the existing study whose data section (and so split per seed) it shares
REPRESENTATION_STUDIES = {
    "representations_perov5_gapped": "perov5_gapped",
    "representations_mp20_crystal_system": "mp20_crystal_system",
    "representations_mp20_wide_gap": "mp20_crystal_system",
}


@pytest.mark.parametrize("name", sorted(REPRESENTATION_STUDIES))
def test_representation_studies_cross_every_representation_with_every_loss(name):
    study = benchmark.load_benchmark_config(CONFIGS / f"{name}.yaml")
    source = read_yaml(CONFIGS / f"{REPRESENTATION_STUDIES[name]}.yaml")
    shared = {k: v for k, v in study.train["data"].items() if k != "task"}
    assert shared == {k: v for k, v in source["train"]["data"].items() if k != "task"}
    assert len(study.seeds) >= 3 and study.baseline == "cgcnn_ce"
    cells = benchmark.plan_cells(study, Path("x"))
    seen = {
        (c.settings["model"]["name"], c.settings["featurizer"]["kind"], c.settings["loss"]["name"])
        for c in cells
    }
    for model, featurizer in (("cgcnn", "auto"), ("alignn", "auto"), ("mlp", "chgnet")):
        for loss in ("ce", "weighted_ce", "magnitude"):
            assert (model, featurizer, loss) in seen, (model, featurizer, loss)
