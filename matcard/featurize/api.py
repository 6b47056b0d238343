"""High-level featurization: a dataset (or any ``(id, payload)`` items) -> a cached FeatureStore.

``featurize_dataset("mp20_biternary", "graph", task="crystal_system", jobs=2)`` reads the
dataset through the registry, featurizes it in parallel into a sharded, checksummed store keyed
by (dataset content hash, featurizer config, matcard version) and returns a
:class:`FeaturizeReport`. A second call with the same inputs is served from the store; an
interrupted or corrupted store is completed / repaired shard by shard.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from matcard.errors import ConfigError, MatcardError, UsageError
from matcard.featurize.cache import (
    FeatureStore,
    cache_key,
    features_root,
    fill_store,
    open_store,
    store_lock,
)
from matcard.featurize.chgnet import ChgnetFeaturizer, ChgnetFeaturizerConfig
from matcard.featurize.composition import CompositionFeaturizer, CompositionFeaturizerConfig
from matcard.featurize.graph import GraphFeaturizer, GraphFeaturizerConfig, StructureArrays
from matcard.featurize.parallel import ItemFailure, resolve_jobs, run_featurization

if TYPE_CHECKING:
    from torch_geometric.data import Data

AnyFeaturizer = GraphFeaturizer | CompositionFeaturizer | ChgnetFeaturizer
FEATURIZER_KINDS = ("graph", "composition", "chgnet")
DEFAULT_SHARD_SIZE = 4096
# Below this many items a worker pool costs more than it saves (measured: a graph takes ~0.3 ms,
# a worker start ~1 s; matminer descriptors take ~1.5 ms per composition). A CHGNet worker must import
# torch + chgnet and load the checkpoint (~8 s), and one process with torch's intra-op threads uses
# the cores about as well (benchmarks/featurize.py), so CHGNet runs in-process unless asked.
_MIN_ITEMS_FOR_WORKERS = {"graph": 5000, "composition": 500, "chgnet": 1_000_000}


def featurizer_from_config(
    config: dict[str, Any] | GraphFeaturizerConfig | CompositionFeaturizerConfig | ChgnetFeaturizerConfig,
) -> AnyFeaturizer:
    """Rebuild exactly the featurizer described by ``config`` (``featurizer.config.model_dump()``).

    The ``kind`` field selects the featurizer ("graph" when absent); unknown or invalid fields
    raise ConfigError naming the field.
    """
    if isinstance(config, GraphFeaturizerConfig):
        return GraphFeaturizer(config)
    if isinstance(config, CompositionFeaturizerConfig):
        return CompositionFeaturizer(config)
    if isinstance(config, ChgnetFeaturizerConfig):
        return ChgnetFeaturizer(config)
    if not isinstance(config, dict):
        raise ConfigError(f"featurizer config must be a mapping, got {type(config).__name__}")
    kind = config.get("kind", "graph")
    try:
        if kind == "graph":
            return GraphFeaturizer(GraphFeaturizerConfig(**config))
        if kind == "composition":
            return CompositionFeaturizer(CompositionFeaturizerConfig(**config))
        if kind == "chgnet":
            return ChgnetFeaturizer(ChgnetFeaturizerConfig(**config))
        if kind == "chgnet_graph":  # model input for chgnet_finetune; not a FeatureStore kind
            from matcard.featurize.chgnet_graphs import ChgnetGraphFeaturizer, ChgnetGraphFeaturizerConfig

            return ChgnetGraphFeaturizer(ChgnetGraphFeaturizerConfig(**config))  # type: ignore[return-value]
    except ValidationError as error:
        first = error.errors()[0]
        field_name = ".".join(str(p) for p in first["loc"]) or "featurizer"
        raise ConfigError(f"featurizer.{field_name}: {first['msg']}") from error
    raise ConfigError(
        f"featurizer.kind: unknown featurizer {kind!r} "
        f"(expected one of {(*FEATURIZER_KINDS, 'chgnet_graph')})"
    )


def make_featurizer(
    featurizer: str | dict[str, Any] | AnyFeaturizer | None = None, **options: Any
) -> AnyFeaturizer:
    """A featurizer from a name ("graph" / "composition" / "chgnet"), a config dict or a featurizer."""
    if isinstance(featurizer, GraphFeaturizer | CompositionFeaturizer | ChgnetFeaturizer):
        if options:
            return featurizer_from_config({**featurizer.config.model_dump(), **options})
        return featurizer
    if featurizer is None or isinstance(featurizer, str):
        kind = featurizer or "graph"
        if kind not in FEATURIZER_KINDS:
            raise UsageError(f"unknown featurizer {kind!r} (expected one of {', '.join(FEATURIZER_KINDS)})")
        return featurizer_from_config({"kind": kind, **{k: v for k, v in options.items() if v is not None}})
    return featurizer_from_config({**featurizer, **options})


@dataclass
class FeaturizeReport:
    """What a featurization run produced (the store) and how it went."""

    store: FeatureStore
    featurizer: AnyFeaturizer
    from_cache: bool
    seconds: float  # wall time of this call (load or build)
    built: int  # items featurized by this call (0 when served from the cache)
    rebuilt_shards: list[int] = field(default_factory=list)
    labels: np.ndarray | None = None  # y per input position (task given), -1 = unlabelled
    class_names: list[str] | None = None
    ids: list[str] | None = None  # input ids in input order

    @property
    def failures(self) -> list[ItemFailure]:
        return self.store.failures

    def summary(self) -> dict[str, Any]:
        stats = self.store.stats()
        summary: dict[str, Any] = {
            "path": str(self.store.path),
            "kind": self.store.kind,
            "inputs": self.store.n_inputs,
            **stats,
            "seconds": round(self.seconds, 3),
            "per_second": round(self.built / self.seconds, 1) if self.built and self.seconds > 0 else None,
            "from_cache": self.from_cache,
            "rebuilt_shards": self.rebuilt_shards,
            "flagged": len(self.store.flags),
            "flag_counts": dict(
                Counter(flag.split(":")[0] for flags in self.store.flags.values() for flag in flags)
            ),
            "n_features": self.featurizer.node_dim,
            "featurizer": self.featurizer.config.model_dump(),
        }
        if self.labels is not None and self.class_names is not None:
            positions = self.store.positions()
            y = self.labels[positions]
            summary["class_counts"] = {
                name: int(np.count_nonzero(y == c)) for c, name in enumerate(self.class_names)
            }
        return summary

    def write_labels(self, task: str) -> Path:
        """Save the task's labels beside the features (``labels-<task>.parquet``: id, position,
        y, class) so the folder is self-contained for training elsewhere."""
        import pandas as pd

        from matcard.fileio import atomic_path

        if self.labels is None or self.class_names is None or self.ids is None:
            raise MatcardError("no labels to write (featurize with a task)")
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in task)
        path = self.store.path / f"labels-{safe}.parquet"
        frame = pd.DataFrame(
            {
                "id": self.ids,
                "position": np.arange(len(self.ids)),
                "y": self.labels,
                "class": [self.class_names[c] for c in self.labels],
            }
        )
        with atomic_path(path) as tmp:
            frame.to_parquet(tmp, index=False)
        return path

    def load(self) -> list[Data]:
        """Every featurized item as ``Data`` with ``y`` attached when a task was given."""
        return self.store.load(self.labels)


def _items_hash(items: Sequence[tuple[str, Any]]) -> str:
    """Content hash of arbitrary items (ids + structure arrays / formulas) for the cache key."""
    from pymatgen.core import Composition, Structure

    digest = hashlib.sha256()
    for item_id, payload in items:
        digest.update(str(item_id).encode() + b"\0")
        if isinstance(payload, Structure):
            digest.update(payload.lattice.matrix.tobytes())
            digest.update(np.ascontiguousarray(payload.frac_coords).tobytes())
            digest.update(" ".join(str(site.species) for site in payload).encode())
        elif isinstance(payload, Composition):
            digest.update(payload.formula.encode())
        else:
            digest.update(repr(payload).encode())
    return digest.hexdigest()


def featurize_items(
    items: Sequence[tuple[str, Any]],
    featurizer: str | dict[str, Any] | AnyFeaturizer | None = None,
    *,
    content_hash: str | None = None,
    name: str = "items",
    out: str | Path | None = None,
    jobs: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    chunk_size: int | None = None,
    progress: bool = True,
    verify_checksums: bool = True,
) -> FeaturizeReport:
    """Featurize ``(id, payload)`` items into a store at ``out`` (default: the feature cache).

    Items already featurized under the same key are loaded, not rebuilt; missing or corrupt
    shards are (re)built. ``jobs``: worker processes (0 = all cores, 1 = this process; None =
    all cores unless the job is too small to pay for starting workers).
    """
    from matcard.console import escape, make_progress

    began = time.perf_counter()
    featurizer = make_featurizer(featurizer)
    n_jobs = resolve_jobs(jobs)
    if shard_size < 1:
        raise UsageError("shard_size must be >= 1")
    dataset_hash = content_hash or _items_hash(items)
    config = featurizer.config.model_dump()
    key = cache_key(dataset_hash, config)
    path = Path(out) if out is not None else features_root() / f"{name}-{featurizer.kind}-{key}"
    with store_lock(path):  # one writer per store; a second process waits, then loads
        store, bad = open_store(
            path,
            key=key,
            kind=featurizer.kind,
            featurizer_config=config,
            n_inputs=len(items),
            shard_size=shard_size,
            dataset={"name": name, "content_hash": dataset_hash},
            verify_checksums=verify_checksums,
        )
        pending = [k for k in range(store.n_shards) if k not in store.shards]
        from_cache = not pending and not bad
        n_pending = sum(min(shard_size, len(items) - k * shard_size) for k in pending)
        if jobs is None and n_pending < _MIN_ITEMS_FOR_WORKERS[featurizer.kind]:
            n_jobs = 1  # starting workers would cost more than the work itself
        if chunk_size is None:
            # small enough to spread over the workers and update the bar, large enough to amortise IPC
            chunk_size = int(np.clip(n_pending // (8 * n_jobs) or 1, 16, 256))
        chunk_size = max(1, min(chunk_size, shard_size))
        while shard_size % chunk_size:  # chunks never straddle a shard boundary
            chunk_size -= 1

        if pending:
            with make_progress(disable=not progress) as bar:
                task = bar.add_task(f"featurize {escape(name)} ({featurizer.kind})", total=n_pending)
                # one run per contiguous range of pending shards (usually exactly one)
                ranges: list[list[int]] = []
                for k in pending:
                    if ranges and ranges[-1][-1] == k - 1:
                        ranges[-1].append(k)
                    else:
                        ranges.append([k])
                for run in ranges:
                    start, stop = run[0] * shard_size, min((run[-1] + 1) * shard_size, len(items))
                    chunks = run_featurization(
                        featurizer,
                        items[start:stop],
                        jobs=n_jobs,
                        chunk_size=chunk_size,
                        start=start,
                        on_chunk=lambda chunk: bar.advance(task, chunk.stop - chunk.start),
                        collate=True,
                    )
                    fill_store(store, chunks)
        elapsed = time.perf_counter() - began
        return FeaturizeReport(
            store=store,
            featurizer=featurizer,
            from_cache=from_cache,
            seconds=elapsed,
            built=n_pending,
            rebuilt_shards=bad,
            ids=list(items.ids) if isinstance(items, _StoreItems) else [str(i) for i, _ in items],
        )


class _StoreItems(Sequence[tuple[str, Any]]):
    """``(id, StructureArrays)`` read straight from a dataset's flat structure store, so graphs are
    built without ever constructing pymatgen ``Structure`` objects (faster, far less memory)."""

    def __init__(self, ids: list[str], store: Any) -> None:
        self.ids = ids
        self.lattices: np.ndarray = store.lattices
        self.species: Sequence[str] = store.species
        self.frac_coords: np.ndarray = store.frac_coords
        self.offsets: np.ndarray = store.offsets
        self._z: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def _atomic_number(self, symbol: str) -> int:
        z = self._z.get(symbol)
        if z is None:
            from pymatgen.core.periodic_table import get_el_sp

            try:
                z = int(getattr(get_el_sp(symbol), "Z", 0))
            except ValueError:
                z = 0  # unknown symbol: the graph builder reports it as a per-item failure
            self._z[symbol] = z
        return z

    def _arrays(self, index: int) -> StructureArrays | None:
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        lattice = np.ascontiguousarray(self.lattices[index])
        cart = np.ascontiguousarray(self.frac_coords[start:stop] @ lattice)
        species = self.species[start:stop]
        pbc = np.ones(3, dtype=np.int64)
        if not any(s.startswith("{") for s in species):
            numbers = np.fromiter((self._atomic_number(s) for s in species), np.int64, len(species))
            return StructureArrays(lattice, cart, numbers, pbc)
        sites, zs, occus, majority = [], [], [], []
        for site, text in enumerate(species):
            mix = json.loads(text) if text.startswith("{") else {text: 1.0}
            entries = [(self._atomic_number(k), float(v)) for k, v in mix.items()]
            majority.append(max(entries, key=lambda e: e[1])[0])
            for z, occu in entries:
                sites.append(site)
                zs.append(z)
                occus.append(occu)
        occupancy = (np.array(sites, np.int64), np.array(zs, np.int64), np.array(occus))
        return StructureArrays(lattice, cart, np.array(majority, np.int64), pbc, occupancy)

    def __getitem__(self, key: int | slice) -> Any:  # type: ignore[override]
        if isinstance(key, slice):
            return [self[i] for i in range(*key.indices(len(self)))]
        return self.ids[key], self._arrays(key)


def featurize_dataset(
    source: Any,
    featurizer: str | dict[str, Any] | AnyFeaturizer | None = None,
    *,
    task: str | None = None,
    out: str | Path | None = None,
    jobs: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
    mirror: str | None = None,
    data_dir: str | Path | None = None,
) -> FeaturizeReport:
    """Featurize a registered dataset or a path (anything ``load_dataset`` accepts).

    Structures datasets can use either featurizer (composition descriptors are taken from the
    structures' compositions); composition-only datasets (formulas, glass oxides) need the
    composition featurizer. With ``task``, labels are attached as ``y`` when loading.
    """
    from matcard.datasets import load_dataset

    featurizer = make_featurizer(featurizer)
    dataset = (
        source if hasattr(source, "content_hash") else load_dataset(source, mirror=mirror, data_dir=data_dir)
    )
    labels = class_names = None
    if task is not None:
        labelled = dataset.labels(task)
        labels, class_names = np.asarray(labelled.y, dtype=np.int64), list(labelled.class_names)
    items: Sequence[tuple[str, Any]]
    ids = [str(i) for i in dataset.table["id"]]
    store = getattr(dataset, "store", None)
    if featurizer.kind == "graph" and store is not None and hasattr(store, "offsets"):
        items = _StoreItems(ids, store)
    elif dataset.kind == "structures":
        items = list(zip(ids, dataset.structures(), strict=True))
    elif featurizer.kind in ("graph", "chgnet"):
        raise UsageError(f"dataset {dataset.name!r} has compositions only; use the composition featurizer")
    else:
        items = list(zip(ids, dataset.compositions(), strict=True))
    if labels is not None and len(labels) != len(items):
        raise MatcardError(f"task {task!r}: {len(labels)} labels for {len(items)} items")
    report = featurize_items(
        items,
        featurizer,
        content_hash=str(dataset.content_hash),
        name=str(dataset.name),
        out=out,
        jobs=jobs,
        shard_size=shard_size,
        progress=progress,
    )
    report.labels, report.class_names = labels, class_names
    return report
