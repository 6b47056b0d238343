from __future__ import annotations

from pathlib import Path

import pytest

from matcard.config import TrainConfig, config_from_any, load_config, parse_assignment
from matcard.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_embedded_defaults_are_the_shipped_default_config():
    """`matcard train` without files (e.g. from a wheel) runs exactly configs/default.yaml."""
    assert load_config(CONFIGS / "default.yaml") == TrainConfig()
    assert TrainConfig().data.dataset == "aflow-prototypes"
    assert TrainConfig().model.name == "cgcnn"


@pytest.mark.parametrize("name", ["default", "mp20_crystal_system", "perov5_gapped", "glass_tg"])
def test_shipped_configs_are_valid(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.trainer.epochs >= 1
    config.featurizer_kind()  # model and featurizer agree


def test_unknown_key_fails_naming_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"trainer\.epochz: unknown key"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"optim\.lrate: unknown key"):
        load_config(overrides={"optim.lrate": 0.1})


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"epochs": 0}, "trainer.epochs"),
        ({"batch_size": "big"}, "trainer.batch_size"),
        ({"model": "transformer"}, "model.name"),
        ({"optim.schedule": "exponential"}, "optim.schedule"),
        ({"data.val_fraction": 0.7}, "data.val_fraction"),
        ({"trainer.devices": -1}, "trainer.devices"),
    ],
)
def test_bad_values_fail_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(overrides=override)


def test_precedence_defaults_file_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  epochs: 7\n  batch_size: 16\nloss:\n  name: magnitude\n")
    config = load_config(path, overrides={"epochs": 3, "optim.lr": 1e-4, "seed": None})
    assert (config.trainer.epochs, config.trainer.batch_size, config.loss.name) == (3, 16, "magnitude")
    assert config.optim.lr == 1e-4
    assert config.trainer.seed == 0  # None means "not given"
    assert config.data.dataset == "aflow-prototypes"  # untouched sections keep the defaults


def test_round_trip_through_yaml(tmp_path):
    config = load_config(overrides={"loss": "focal", "loss.params": {"gamma": 1.5}, "epochs": 2})
    path = tmp_path / "resolved.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config


def test_set_assignments_parse_yaml_values():
    assert parse_assignment("optim.lr=1e-3") == ("optim.lr", 1e-3)
    assert parse_assignment("trainer.patience=null") == ("trainer.patience", None)
    assert parse_assignment("loss.params={gamma: 2}") == ("loss.params", {"gamma": 2})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignment("optim.lr")


def test_bad_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("trainer: [\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(tmp_path / "broken.yaml")


def test_model_and_featurizer_kinds_must_agree():
    with pytest.raises(ConfigError, match=r"featurizer\.kind"):
        load_config(overrides={"model": "mlp", "featurizer.kind": "graph"}).featurizer_kind()
    assert load_config(overrides={"model": "mlp"}).featurizer_kind() == "composition"


def test_config_from_any_accepts_objects_dicts_and_paths(tmp_path):
    base = TrainConfig()
    assert config_from_any(base) is base
    assert config_from_any(base, epochs=4).trainer.epochs == 4
    assert config_from_any({"trainer": {"epochs": 5}}).trainer.epochs == 5
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  epochs: 6\n")
    assert config_from_any(path).trainer.epochs == 6


def test_overrides_never_write_into_the_callers_base():
    base = {"trainer": {"epochs": 5}, "optim": {"lr": 0.01}}
    first = load_config(base=base, overrides={"trainer.epochs": 50, "optim.lr": 0.5})
    second = load_config(base=base)
    assert (first.trainer.epochs, first.optim.lr) == (50, 0.5)
    assert (second.trainer.epochs, second.optim.lr) == (5, 0.01)
    assert base == {"trainer": {"epochs": 5}, "optim": {"lr": 0.01}}


def test_loss_class_weights_from_set_and_yaml(tmp_path):
    from matcard.training import preflight

    key, value = parse_assignment("loss.params.weights=[1,8.9]")
    config = load_config(overrides={"loss": "weighted_ce", key: value})
    assert config.loss.params == {"weights": [1, 8.9]}
    path = tmp_path / "c.yaml"
    path.write_text("loss: {name: weighted_ce, params: {weights: [1, 8.9]}}\n")
    assert load_config(path).loss == config.loss
    preflight(config)
    # a seven-class control passes the data-free check too (the class count is checked on the data)
    preflight(load_config(overrides={"loss": "weighted_ce", "loss.params": {"weights": [1.0] * 7}}))
    with pytest.raises(ConfigError, match="weights"):
        preflight(load_config(overrides={"loss": "weighted_ce", "loss.params": {"weights": [1.0, -1.0]}}))
