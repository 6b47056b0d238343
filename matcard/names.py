"""Registered loss and model names, importable without torch.

Configuration is validated against these lists before any heavy import, so a typo in ``--loss`` or
``--model`` fails at once (exit 2) instead of after the torch / Lightning imports. The registries
(``matcard.losses.LOSSES``, ``matcard.models.MODELS``) remain the source of truth: tests check that
these lists equal them, so a newly registered loss or model must be added here too.
"""

from __future__ import annotations

LOSS_NAMES: tuple[str, ...] = (
    "balanced_softmax",
    "ce",
    "class_balanced",
    "equalization",
    "focal",
    "inverse_view",
    "ldam",
    "logit_adjusted",
    "magnitude",
    "magnitude_class_geometry",
    "magnitude_reference",
    "mse",
    "ot_reweight",
    "seesaw",
    "spread",
    "spread_reference",
    "weighted_ce",
)
# accepted spellings of registered losses (as matcard.losses.build resolves them)
LOSS_ALIASES: dict[str, str] = {
    "cross_entropy": "ce",
    "crossentropy": "ce",
    "wce": "weighted_ce",
    "cb": "class_balanced",
    "la": "logit_adjusted",
    "logit_adjustment": "logit_adjusted",
    "eql": "equalization",
    "ot": "ot_reweight",
    "mag": "magnitude",
}
# model name -> the input it consumes ("graph": periodic crystal graphs, "vector": one descriptor
# vector per item, from the composition or the chgnet featurizer, "crystal_graph": CHGNet's own
# crystal graphs, which only CHGNet itself can consume)
MODEL_INPUT_KINDS: dict[str, str] = {
    "alignn": "graph",
    "cgcnn": "graph",
    "chgnet_finetune": "crystal_graph",
    "mlp": "vector",
    "schnet": "graph",
}
# input kind -> featurizer kinds that produce it; the first is what featurizer.kind=auto picks
INPUT_FEATURIZERS: dict[str, tuple[str, ...]] = {
    "graph": ("graph",),
    "vector": ("composition", "chgnet"),
    "crystal_graph": ("chgnet_graph",),
}


def loss_key(name: str) -> str:
    """How ``matcard.losses.build`` normalises a name before looking it up (aliases aside)."""
    return name.strip().lower().replace("-", "_")


def _registered_at_run_time() -> set[str]:
    """Losses registered by user code: registering one imports matcard.losses, so when that module is
    loaded its registry is asked too (without importing torch here when it is not)."""
    import sys

    module = sys.modules.get("matcard.losses.base")
    return set(getattr(module, "LOSSES", {})) if module is not None else set()


def check_loss_name(name: str) -> str:
    key = loss_key(name)
    key = LOSS_ALIASES.get(key, key)
    if key not in LOSS_NAMES and key not in _registered_at_run_time():
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    return name


def check_model_name(name: str) -> str:
    key = name.lower()
    if key not in MODEL_INPUT_KINDS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODEL_INPUT_KINDS))}")
    return key
