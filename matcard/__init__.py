"""matcard: imbalance-aware classifiers for crystal structures and compositions.

Heavy dependencies (torch, pymatgen) are imported lazily so that ``import matcard`` and the
CLI start quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

from matcard._version import __version__

# public name -> "module:attribute" (attribute empty for a module)
_LAZY: dict[str, str] = {
    "read_structures": "matcard.structures:read_structures",
    "load_dataset": "matcard.datasets:load_dataset",
    "train": "matcard.training:train",
    "load_model": "matcard.bundle:load_model",
    "screen": "matcard.screening:screen",
    "magnitude": "matcard.magnitude:",
    "losses": "matcard.losses:",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'matcard' has no attribute {name!r}")
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    value = getattr(module, attribute) if attribute else module
    globals()[name] = value
    return value
