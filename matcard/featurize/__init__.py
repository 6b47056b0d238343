"""Featurization: crystal graphs, composition descriptors, CHGNet features; parallel and cached.

Public API (imported lazily, so that ``import matcard.featurize`` does not import torch)::

    GraphFeaturizerConfig, GraphFeaturizer           crystal graphs (graph.py)
    CompositionFeaturizerConfig, CompositionFeaturizer, oxide_compositions   (composition.py)
    ChgnetFeaturizerConfig, ChgnetFeaturizer         frozen pretrained CHGNet features (chgnet.py)
    featurizer_from_config(dict)                     rebuild a featurizer from its config
    featurize_dataset(source, featurizer, task=...)  registry dataset -> cached FeatureStore
    featurize_items([(id, structure), ...], ...)     any items -> cached FeatureStore
    FeatureStore, ShardedGraphDataset                read / stream a store (cache.py, stream.py)
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "GraphFeaturizerConfig": "matcard.featurize.graph",
    "GraphFeaturizer": "matcard.featurize.graph",
    "GraphArrays": "matcard.featurize.graph",
    "StructureArrays": "matcard.featurize.graph",
    "FeaturizationError": "matcard.featurize.graph",
    "CompositionFeaturizerConfig": "matcard.featurize.composition",
    "CompositionFeaturizer": "matcard.featurize.composition",
    "oxide_compositions": "matcard.featurize.composition",
    "featurize_compositions": "matcard.featurize.composition",
    "ChgnetFeaturizerConfig": "matcard.featurize.chgnet",
    "ChgnetFeaturizer": "matcard.featurize.chgnet",
    "featurizer_from_config": "matcard.featurize.api",
    "make_featurizer": "matcard.featurize.api",
    "featurize_dataset": "matcard.featurize.api",
    "featurize_items": "matcard.featurize.api",
    "FeaturizeReport": "matcard.featurize.api",
    "FeatureStore": "matcard.featurize.cache",
    "ShardedGraphDataset": "matcard.featurize.stream",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'matcard.featurize' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
