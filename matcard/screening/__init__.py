"""Streaming, sharded, resumable screening of candidate structures with a trained model.

``screen(model, inputs, out=None, ...)`` is the entry point (see matcard.screening.pipeline);
shards and their crash-safe store live in ``shards``, the per-shard work in ``worker`` and the
execution backends (in process, local processes, Dask) in ``backends``.
"""

from __future__ import annotations

from matcard.screening.pipeline import ScreenResult, errors_path_for, screen, shortlist_path_for
from matcard.screening.shards import ShardPlanner, ShardStore, plan_shards
from matcard.screening.worker import TrainingDomain

__all__ = [
    "ScreenResult",
    "ShardPlanner",
    "ShardStore",
    "TrainingDomain",
    "errors_path_for",
    "plan_shards",
    "screen",
    "shortlist_path_for",
]
