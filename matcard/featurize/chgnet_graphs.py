"""CHGNet's own crystal graphs as model input: what the ``chgnet_finetune`` architecture consumes.

Fine-tuning CHGNet needs its atom graph (6 Å), bond graph (3 Å) and the bases it expands them
into, which CHGNet builds itself (``CrystalGraph``); they are not torch-geometric ``Data``. This
module is that data path:

- :class:`ChgnetGraphFeaturizer` (``kind="chgnet_graph"``) turns one structure into a
  ``CrystalGraph`` (or a ``FeaturizationError`` with a plain reason: unsupported element,
  isolated atom, disorder). Its config pins the pretrained checkpoint and the chgnet package
  version, because both decide what the graphs look like; a model bundle records them.
- :func:`crystal_graphs_for` converts a dataset, reports failures per structure and caches the
  graphs (plain tensors, one file per dataset + config) under the feature cache.
- :class:`CrystalGraphBatch` / :func:`crystal_graph_loader`: batches are a list of graphs plus
  the labels, with ``y`` / ``num_graphs`` / ``to(device)`` like a torch-geometric ``Batch``, so
  the training loop treats both kinds of input alike.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from matcard.errors import ConfigError
from matcard.featurize.chgnet import (
    CHGNET_REQUIREMENT,
    check_model_version,
    convert,
    installed_chgnet,
    load_chgnet,
)
from matcard.featurize.graph import FeaturizationError

if TYPE_CHECKING:
    import torch

CACHE_FORMAT = 1  # bump when the cached file layout changes


def _installed_version() -> str:
    found = installed_chgnet()
    return found[0] if found is not None else "missing"


class ChgnetGraphFeaturizerConfig(BaseModel):
    """Which CHGNet builds the graphs; stored with trained models and in the cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["chgnet_graph"] = "chgnet_graph"
    model_version: str = Field("0.3.0", description="pretrained checkpoint (0.3.0, 0.2.0, r2scan)")
    chgnet_version: str = Field(
        default_factory=_installed_version,
        description="chgnet package version the graphs were built with (defaults to the installed one)",
    )

    @field_validator("model_version")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a checkpoint")
        return value


class ChgnetGraphFeaturizer:
    """Callable turning a structure into CHGNet's ``CrystalGraph`` (no network is run)."""

    kind = "chgnet_graph"
    node_dim = 0  # CHGNet embeds atomic numbers itself: there is no input feature width

    def __init__(self, config: ChgnetGraphFeaturizerConfig | dict[str, Any] | None = None, **overrides: Any):
        if config is None:
            config = ChgnetGraphFeaturizerConfig(**overrides)
        elif isinstance(config, dict):
            config = ChgnetGraphFeaturizerConfig(**{**config, **overrides})
        check_model_version(config.model_version)
        installed = _installed_version()
        if config.chgnet_version != installed:
            # another chgnet may build other graphs (cutoffs, bond bases) for the same weights
            raise ConfigError(
                f"featurizer.chgnet_version: this model's CHGNet graphs were built with chgnet "
                f"{config.chgnet_version}, but chgnet {installed} is installed; install "
                f"chgnet=={config.chgnet_version} (matcard is tested with {CHGNET_REQUIREMENT})"
            )
        self.config: ChgnetGraphFeaturizerConfig = config

    @property
    def model(self) -> Any:
        return load_chgnet(self.config.model_version)

    def __call__(self, structure: Any, y: int | None = None) -> Any:
        return convert(self.model, structure)

    def featurize_many(self, structures: Sequence[Any]) -> list[Any]:
        """``CrystalGraph`` per structure, or the FeaturizationError explaining why not (in order)."""
        model = self.model
        out: list[Any] = []
        for structure in structures:
            try:
                out.append(convert(model, structure))
            except FeaturizationError as error:
                out.append(error)
        return out

    def __repr__(self) -> str:
        return f"ChgnetGraphFeaturizer({self.config!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChgnetGraphFeaturizer) and other.config == self.config

    def __hash__(self) -> int:
        return hash(self.config)


# --------------------------------------------------------------------------- batches


@dataclass
class CrystalGraphBatch:
    """A mini-batch: CHGNet graphs and their labels (-1 where unlabelled)."""

    graphs: list[Any]
    y: torch.Tensor

    @property
    def num_graphs(self) -> int:
        return len(self.graphs)

    def to(self, device: Any) -> CrystalGraphBatch:
        """Lightning moves a batch by calling this (any object with ``to`` is transferable)."""
        if str(device) == "cpu" and all(g.atomic_number.device.type == "cpu" for g in self.graphs):
            return CrystalGraphBatch(self.graphs, self.y.to(device))
        return CrystalGraphBatch([g.to(str(device)) for g in self.graphs], self.y.to(device))


def collate_crystal_graphs(items: Sequence[tuple[Any, int]]) -> CrystalGraphBatch:
    import torch

    return CrystalGraphBatch([graph for graph, _ in items], torch.tensor([int(y) for _, y in items]))


def crystal_graph_loader(
    graphs: Sequence[Any],
    y: Sequence[int] | np.ndarray | None = None,
    *,
    batch_size: int,
    shuffle: bool = False,
    sampler: Any = None,
    num_workers: int = 0,
) -> Any:
    """A torch DataLoader over ``(graph, label)`` pairs yielding :class:`CrystalGraphBatch`."""
    from torch.utils.data import DataLoader

    labels = np.full(len(graphs), -1, dtype=np.int64) if y is None else np.asarray(y, dtype=np.int64)
    if len(labels) != len(graphs):
        raise ValueError(f"{len(graphs)} graphs but {len(labels)} labels")
    pairs = list(zip(graphs, labels.tolist(), strict=True))
    return DataLoader(
        pairs,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=collate_crystal_graphs,
    )


# --------------------------------------------------------------------------- a dataset, cached


def crystal_graphs_for(
    dataset: Any, featurizer: ChgnetGraphFeaturizer, *, cache: bool, progress: bool
) -> tuple[list[Any], np.ndarray, list[dict[str, str]]]:
    """(CrystalGraphs, their dataset positions, failures) for every structure of ``dataset``.

    Converting costs ~10-40 ms per structure; the graphs are cached as plain tensors (read back
    with ``weights_only=True``) keyed by the dataset content and the featurizer config.
    """
    path = _cache_path(dataset, featurizer) if cache else None
    if path is not None and path.is_file():
        loaded = _read_cache(path)
        if loaded is not None:
            return loaded
    graphs, positions, failures = _convert_dataset(dataset, featurizer, progress)
    if path is not None:
        _write_cache(path, graphs, positions, failures)
    return graphs, positions, failures


def _convert_dataset(
    dataset: Any, featurizer: ChgnetGraphFeaturizer, progress: bool
) -> tuple[list[Any], np.ndarray, list[dict[str, str]]]:
    from matcard.console import make_progress

    model = featurizer.model
    ids = dataset.ids
    graphs: list[Any] = []
    positions: list[int] = []
    failures: list[dict[str, str]] = []
    bar = make_progress(transient=True) if progress else None
    if bar is not None:
        bar.start()
        task = bar.add_task(f"CHGNet graphs of {dataset.name}", total=len(ids))
    try:
        for position, item_id in enumerate(ids):
            try:
                graphs.append(convert(model, dataset.structure(position), graph_id=str(item_id)))
                positions.append(position)
            except FeaturizationError as error:
                failures.append({"id": str(item_id), "stage": "featurize", "reason": str(error)})
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    return graphs, np.asarray(positions, dtype=np.int64), failures


def _cache_path(dataset: Any, featurizer: ChgnetGraphFeaturizer) -> Path:
    from matcard._version import __version__
    from matcard.featurize.cache import features_root

    payload = {
        "dataset": str(dataset.content_hash),
        "featurizer": featurizer.config.model_dump(mode="json"),
        "matcard": __version__,
        "format": CACHE_FORMAT,
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
    return features_root() / f"{dataset.name}-chgnet_graph-{key}.pt"


def _read_cache(path: Path) -> tuple[list[Any], np.ndarray, list[dict[str, str]]] | None:
    """The cached graphs, or None when the file cannot be read (it is then rebuilt)."""
    import pickle

    import torch
    from chgnet.graph import CrystalGraph

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        graphs = [CrystalGraph.from_dict(entry) for entry in state["graphs"]]
        positions = state["positions"].numpy().astype(np.int64)
        failures = [dict(zip(("id", "stage", "reason"), row, strict=True)) for row in state["failures"]]
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, TypeError, pickle.UnpicklingError):
        return None
    if len(graphs) != len(positions):
        return None
    return graphs, positions, failures


def _write_cache(
    path: Path, graphs: list[Any], positions: np.ndarray, failures: list[dict[str, str]]
) -> None:
    import torch

    from matcard.fileio import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "graphs": [graph.to_dict() for graph in graphs],
        "positions": torch.from_numpy(positions),
        "failures": [[f["id"], f["stage"], f["reason"]] for f in failures],
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


__all__ = [
    "ChgnetGraphFeaturizer",
    "ChgnetGraphFeaturizerConfig",
    "CrystalGraphBatch",
    "collate_crystal_graphs",
    "crystal_graph_loader",
    "crystal_graphs_for",
]
