from __future__ import annotations

import pytest

from matcard.errors import ConfigError
from matcard.models import MODELS, available_models, build_model, model_param_names, model_spec


def test_registry_lists_one_architecture_per_file():
    assert available_models() == ["alignn", "cgcnn", "chgnet_finetune", "mlp", "schnet"]
    assert {spec.input_kind for spec in MODELS.values()} == {"graph", "vector", "crystal_graph"}
    assert model_spec("CGCNN").name == "cgcnn"
    assert "cutoff" in model_param_names("cgcnn")


def test_unknown_model_names_the_field():
    with pytest.raises(ConfigError, match=r"model\.name.*'gat'"):
        build_model("gat", 10, 2)


def test_unknown_or_invalid_parameters_name_the_field():
    with pytest.raises(ConfigError, match=r"model\.params.*n_convs"):
        build_model("cgcnn", 10, 2, n_convs=3)
    with pytest.raises(ConfigError, match="n_classes"):
        build_model("cgcnn", 10, 1)
    with pytest.raises(ConfigError, match="pooling"):
        build_model("schnet", 10, 3, pool="median")
