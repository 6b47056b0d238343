"""Model registry: one architecture per file, built by name.

``build_model(name, in_dim, n_classes, **params)`` returns a ``torch.nn.Module`` whose ``forward``
takes a batch (a torch-geometric ``Batch``; for chgnet_finetune a ``CrystalGraphBatch``) and returns
``(logits, pooled_embedding)``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from torch import nn

from matcard.errors import ConfigError
from matcard.models.alignn import ALIGNN
from matcard.models.cgcnn import CGCNN
from matcard.models.chgnet_finetune import ChgnetFinetune
from matcard.models.mlp import CompositionMLP
from matcard.models.schnet import SchNet


@dataclass(frozen=True)
class ModelSpec:
    name: str
    cls: type[nn.Module]
    # "graph" (periodic crystal graphs), "vector" (composition or CHGNet features) or
    # "crystal_graph" (CHGNet's own graphs, for fine-tuning CHGNet)
    input_kind: str
    description: str


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("cgcnn", CGCNN, "graph", "crystal graph convolutions (CGConv), methods §7 defaults"),
        ModelSpec("schnet", SchNet, "graph", "SchNet continuous-filter convolutions on periodic graphs"),
        ModelSpec("alignn", ALIGNN, "graph", "ALIGNN-style: bond angles through the line graph, edge-gated"),
        ModelSpec("mlp", CompositionMLP, "vector", "MLP over per-structure vectors (composition, chgnet)"),
        ModelSpec(
            "chgnet_finetune",
            ChgnetFinetune,
            "crystal_graph",
            "pretrained CHGNet, last interaction blocks fine-tuned under a classification head",
        ),
    )
}


def available_models() -> list[str]:
    return sorted(MODELS)


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ConfigError(f"model.name: unknown model {name!r}; choose one of {available_models()}") from None


def model_param_names(name: str) -> list[str]:
    """Keyword parameters the architecture accepts (for config validation)."""
    signature = inspect.signature(model_spec(name).cls.__init__)
    return [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def build_model(name: str, in_dim: int, n_classes: int, **params: Any) -> nn.Module:
    """Build architecture ``name``; unknown or invalid parameters raise ConfigError naming them."""
    spec = model_spec(name)
    allowed = set(model_param_names(name))
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigError(
            f"model.params: unknown parameter(s) {unknown} for {spec.name}; allowed: {sorted(allowed)}"
        )
    try:
        return spec.cls(in_dim, n_classes, **params)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model.params: invalid parameters for {spec.name}: {error}") from error


__all__ = ["MODELS", "ModelSpec", "available_models", "build_model", "model_param_names", "model_spec"]
