"""On-disk featurized datasets: sharded, checksummed, atomic, resumable, streamable.

A store is one folder::

    manifest.json        key inputs, featurizer config, shards (sha256, bytes, count), failures
    shard-00000.npz      up to ``shard_size`` consecutive input items, collated (see below)
    ...

Shard ``k`` holds the successful items among input positions ``[k * shard_size, (k+1) * shard_size)``
as concatenated tensors plus pointers (``node_ptr``, ``edge_ptr``), the same layout
torch-geometric's ``InMemoryDataset`` uses, saved as an uncompressed NumPy ``.npz`` and read back
with ``allow_pickle=False`` (no pickled code; building and checking a store never imports torch,
which matters for the CLI's start-up). The manifest is rewritten atomically after
every shard, so an interrupted run resumes from its last complete shard; on open every shard's
size and sha256 are checked against the manifest and a truncated or corrupt shard is rebuilt,
never trusted (one line on stderr names it and why). Because each shard is self-contained, data
larger than memory streams one shard at a time (:meth:`FeatureStore.iter_data`, :class:`ShardedGraphDataset`).

The cache key is the sha256 of (dataset content hash, featurizer config, matcard version,
element-table digest, store format); labels are not part of it: graphs do not depend on the
task, and ``y`` is attached from the task's labels when the store is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matcard._version import __version__
from matcard.errors import MatcardError
from matcard.featurize.elements import element_table_digest
from matcard.featurize.parallel import (
    VECTOR_KINDS,
    ChunkResult,
    ItemFailure,
    collate_results,
    merge_collated,
)
from matcard.fileio import atomic_path, atomic_write_json, sha256_file

if TYPE_CHECKING:
    from torch_geometric.data import Data

STORE_FORMAT = 3  # 3: graphs carry edge_vec (older stores are rebuilt, never mixed)
MANIFEST = "manifest.json"


def cache_key(dataset_hash: str, featurizer_config: dict[str, Any]) -> str:
    """Stable key of a featurized dataset (changes whenever the graphs could change)."""
    payload = {
        "dataset": dataset_hash,
        "featurizer": featurizer_config,
        "matcard": __version__,
        "elements": element_table_digest(),
        "format": STORE_FORMAT,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def features_root() -> Path:
    """Where cached features live: ``$MATCARD_DATA_DIR/features`` or the datasets' cache root."""
    env = os.environ.get("MATCARD_DATA_DIR")
    if env:
        return Path(env) / "features"
    try:
        from matcard.datasets.cache import data_dir

        return Path(data_dir()) / "features"
    except ImportError:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("matcard")) / "features"


def _split(shard: dict[str, Any], kind: str, labels: np.ndarray | None) -> list[Data]:
    """Turn one loaded shard back into ``Data`` objects (views into the shard's tensors)."""
    import torch
    from torch_geometric.data import Data

    shard = {k: torch.from_numpy(v) if v.dtype.kind in "biuf" else v for k, v in shard.items()}
    positions = shard["position"].tolist()
    ys = None
    if labels is not None:
        ys = torch.as_tensor(labels[np.asarray(positions, dtype=np.int64)], dtype=torch.long)
    out: list[Data] = []
    if kind in VECTOR_KINDS:
        x = shard["x"]
        for i in range(len(positions)):
            data = Data(x=x[i : i + 1], num_nodes=1)
            if ys is not None:
                data.y = ys[i : i + 1]
            out.append(data)
        return out
    node_ptr = shard["node_ptr"].tolist()
    edge_ptr = shard["edge_ptr"].tolist()
    x = shard.get("x")
    edge_vec = shard.get("edge_vec")
    z, edge_index, edge_dist, edge_offset = (
        shard["z"],
        shard["edge_index"],
        shard["edge_dist"],
        shard["edge_offset"],
    )
    for i in range(len(positions)):
        n0, n1, e0, e1 = node_ptr[i], node_ptr[i + 1], edge_ptr[i], edge_ptr[i + 1]
        data = Data(
            z=z[n0:n1],
            edge_index=edge_index[:, e0:e1],
            edge_dist=edge_dist[e0:e1],
            edge_offset=edge_offset[e0:e1],
            num_nodes=n1 - n0,
        )
        if x is not None:
            data.x = x[n0:n1]
        if edge_vec is not None:
            data.edge_vec = edge_vec[e0:e1]
        if ys is not None:
            data.y = ys[i : i + 1]
        out.append(data)
    return out


@dataclass
class ShardInfo:
    index: int
    file: str
    start: int  # first input position covered
    stop: int
    count: int  # successful items stored
    n_nodes: int
    n_edges: int
    sha256: str
    bytes: int


@dataclass
class FeatureStore:
    """A featurized dataset on disk (see the module docstring for the layout)."""

    path: Path
    key: str
    kind: str  # "graph" | "composition" | "chgnet"
    featurizer_config: dict[str, Any]
    n_inputs: int
    shard_size: int
    dataset: dict[str, Any] = field(default_factory=dict)  # name, content_hash
    shards: dict[int, ShardInfo] = field(default_factory=dict)
    failures: list[ItemFailure] = field(default_factory=list)
    flags: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0  # featurization time accumulated over (resumed) runs
    # why each shard dropped by the last verify() was dropped (not saved in the manifest)
    rejected: dict[int, str] = field(default_factory=dict, repr=False)

    # ---------------------------------------------------------------- manifest
    @property
    def n_shards(self) -> int:
        return max(1, -(-self.n_inputs // self.shard_size)) if self.n_inputs else 0

    @property
    def complete(self) -> bool:
        return len(self.shards) == self.n_shards

    def __len__(self) -> int:
        return sum(s.count for s in self.shards.values())

    def to_manifest(self) -> dict[str, Any]:
        return {
            "format": STORE_FORMAT,
            "key": self.key,
            "kind": self.kind,
            "matcard_version": __version__,
            "featurizer": self.featurizer_config,
            "dataset": self.dataset,
            "n_inputs": self.n_inputs,
            "shard_size": self.shard_size,
            "complete": self.complete,
            "count": len(self),
            "seconds": round(self.seconds, 3),
            "shards": [vars(self.shards[k]) for k in sorted(self.shards)],
            "failures": [vars(f) for f in sorted(self.failures, key=lambda f: f.position)],
            "flags": self.flags,
        }

    def write_manifest(self) -> None:
        atomic_write_json(self.path / MANIFEST, self.to_manifest())

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> FeatureStore:
        """Open a store written earlier (no checksum verification: see :meth:`verify`)."""
        path = Path(path)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            if manifest.get("format") != STORE_FORMAT:
                raise MatcardError(f"{path}: unsupported feature store format {manifest.get('format')}")
            return cls(
                path=path,
                key=manifest["key"],
                kind=manifest["kind"],
                featurizer_config=manifest["featurizer"],
                n_inputs=int(manifest["n_inputs"]),
                shard_size=int(manifest["shard_size"]),
                dataset=manifest.get("dataset", {}),
                shards={int(s["index"]): ShardInfo(**s) for s in manifest["shards"]},
                failures=[ItemFailure(**f) for f in manifest["failures"]],
                flags={k: list(v) for k, v in manifest.get("flags", {}).items()},
                seconds=float(manifest.get("seconds", 0.0)),
            )
        except FileNotFoundError as error:
            raise MatcardError(f"{path}: no {MANIFEST} (not a featurized dataset)") from error
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise MatcardError(f"{path}/{MANIFEST} is corrupt: {error}") from error

    def verify(self, checksums: bool = True) -> list[int]:
        """Drop (and return) shards whose file is missing, truncated or fails its sha256."""
        bad: list[int] = []
        self.rejected = {}
        for index, info in list(self.shards.items()):
            reason = _shard_problem(self.path / info.file, info, checksums)
            if reason:
                bad.append(index)
                self.rejected[index] = reason
                del self.shards[index]
        if bad:
            covered = [(self.shard_size * i, self.shard_size * (i + 1)) for i in bad]
            self.failures = [f for f in self.failures if not any(lo <= f.position < hi for lo, hi in covered)]
        return bad

    # ---------------------------------------------------------------- writing
    def shard_file(self, index: int) -> str:
        return f"shard-{index:05d}.npz"

    def add_shard(
        self,
        index: int,
        shard: dict[str, np.ndarray],
        failures: Sequence[ItemFailure],
        flags: dict[str, list[str]],
    ) -> None:
        """Write one shard (collated arrays, see :func:`collate_results`) and record it."""
        count = len(shard["position"])
        file = self.path / self.shard_file(index)
        with atomic_path(file) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **shard)
            handle.flush()
            os.fsync(handle.fileno())
        start = index * self.shard_size
        self.shards[index] = ShardInfo(
            index=index,
            file=file.name,
            start=start,
            stop=min(start + self.shard_size, self.n_inputs),
            count=count,
            n_nodes=int(shard["node_ptr"][-1]) if "node_ptr" in shard else count,
            n_edges=int(shard["edge_ptr"][-1]) if "edge_ptr" in shard else 0,
            sha256=sha256_file(file),
            bytes=file.stat().st_size,
        )
        self.failures = [f for f in self.failures if not (start <= f.position < start + self.shard_size)]
        self.failures += list(failures)
        self.flags.update(flags)
        self.write_manifest()

    # ---------------------------------------------------------------- reading
    def load_shard(self, index: int) -> dict[str, np.ndarray]:
        """One shard's arrays (NumPy), read whole."""
        info = self.shards[index]
        try:
            with np.load(self.path / info.file, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise MatcardError(
                f"{self.path / info.file} is unreadable ({error}); rerun to rebuild"
            ) from error

    def iter_data(
        self, labels: np.ndarray | None = None, shards: Sequence[int] | None = None
    ) -> Iterator[Data]:
        """Stream ``Data`` objects shard by shard (memory: one shard at a time)."""
        for index in sorted(self.shards) if shards is None else shards:
            yield from _split(self.load_shard(index), self.kind, labels)

    def load(self, labels: np.ndarray | None = None) -> list[Data]:
        """Every item as ``Data`` (``y`` from ``labels[position]`` when labels are given)."""
        return list(self.iter_data(labels))

    def ids(self) -> list[str]:
        out: list[str] = []
        for index in sorted(self.shards):
            out += [str(i) for i in self.load_shard(index)["ids"]]
        return out

    def positions(self) -> np.ndarray:
        """Input position of every stored item, in storage order (ascending).

        Read from the manifest alone (each shard covers a contiguous input range; every input
        in it is either stored or listed as a failure), so no shard is opened.
        """
        parts = [np.arange(info.start, info.stop) for _, info in sorted(self.shards.items())]
        covered = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        failed = np.fromiter((f.position for f in self.failures), dtype=np.int64, count=len(self.failures))
        return covered[~np.isin(covered, failed)]

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """Vector stores (composition, chgnet): (X float32 [N, F], positions [N]) for scikit-learn."""
        if self.kind not in VECTOR_KINDS:
            raise MatcardError("matrix() is for per-structure vectors; graphs are read with load()")
        xs = [self.load_shard(i)["x"] for i in sorted(self.shards)]
        width = len(xs[0][0]) if xs and len(xs[0]) else 0
        return (np.concatenate(xs) if xs else np.zeros((0, width), np.float32)), self.positions()

    def stats(self) -> dict[str, float]:
        count = len(self)
        nodes = sum(s.n_nodes for s in self.shards.values())
        edges = sum(s.n_edges for s in self.shards.values())
        return {
            "count": count,
            "failures": len(self.failures),
            "mean_nodes": nodes / count if count else 0.0,
            "mean_edges": edges / count if count else 0.0,
        }


def _shard_problem(file: Path, info: ShardInfo, checksums: bool) -> str:
    """Why a shard file cannot be trusted ("" when it matches its manifest entry)."""
    if not file.is_file():
        return "missing"
    size = file.stat().st_size
    if size != info.bytes:
        return f"{size} bytes, {info.bytes} expected"
    if checksums and sha256_file(file) != info.sha256:
        return "sha256 mismatch"
    return ""


def _notice(message: str) -> None:
    """One line on stderr (never wrapped, no markup: paths may hold brackets)."""
    from matcard.console import console

    console.print(message, markup=False, soft_wrap=True, highlight=False)


@contextlib.contextmanager
def store_lock(path: Path) -> Iterator[None]:
    """Exclusive lock on a store folder, so two processes featurizing the same dataset into the
    same place (e.g. ``matcard featurize`` and ``matcard train``) take turns instead of racing;
    the second then finds the first one's shards and loads them."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (writes are still atomic)
        yield
        return
    with open(path / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            from matcard.console import console, escape

            console.print(f"waiting for another process featurizing into {escape(path)} ...")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def open_store(
    path: Path,
    *,
    key: str,
    kind: str,
    featurizer_config: dict[str, Any],
    n_inputs: int,
    shard_size: int,
    dataset: dict[str, Any],
    verify_checksums: bool = True,
) -> tuple[FeatureStore, list[int]]:
    """The store at ``path`` if it matches ``key`` (bad shards dropped), else a fresh empty one.

    Returns ``(store, rebuilt)`` where ``rebuilt`` lists shards that were present but failed
    verification (they will be featurized again).
    """
    for leftover in path.glob(".*.tmp"):  # temp files of a run killed mid-write (we hold the lock)
        leftover.unlink(missing_ok=True)
    if (path / MANIFEST).exists():
        try:
            store = FeatureStore.read(path)
        except MatcardError as error:
            _notice(f"{error}; rebuilding the feature store")
            store = None  # corrupt manifest: start over
        if (
            store is not None
            and store.key == key
            and store.n_inputs == n_inputs
            and store.shard_size == shard_size
        ):
            bad = store.verify(checksums=verify_checksums)
            for index in bad:
                reason = store.rejected[index]
                _notice(
                    f"feature shard {path / store.shard_file(index)} is damaged ({reason}); rebuilding it"
                )
            return store, bad
    path.mkdir(parents=True, exist_ok=True)
    for stale in [*path.glob("shard-*.npz"), *path.glob(".*.tmp")]:  # another key's shards: never mix
        stale.unlink()
    store = FeatureStore(
        path=path,
        key=key,
        kind=kind,
        featurizer_config=featurizer_config,
        n_inputs=n_inputs,
        shard_size=shard_size,
        dataset=dataset,
    )
    store.write_manifest()
    return store, []


def fill_store(store: FeatureStore, chunks: Iterator[ChunkResult]) -> None:
    """Consume ordered chunk results of one contiguous run of shards, writing each shard as soon
    as its range is complete (chunks never straddle a shard boundary)."""
    parts: list[dict[str, np.ndarray]] = []
    failures: list[ItemFailure] = []
    flags: dict[str, list[str]] = {}
    current: int | None = None
    began = time.perf_counter()
    for chunk in chunks:
        shard = chunk.start // store.shard_size
        if (chunk.stop - 1) // store.shard_size != shard:
            raise MatcardError("internal error: a featurization chunk straddles two shards")
        if current is not None and shard != current:
            store.add_shard(current, merge_collated(parts, store.kind), failures, flags)
            parts, failures, flags = [], [], {}
        current = shard
        if chunk.arrays is None:
            chunk.arrays = collate_results(chunk.results, store.kind)
            chunk.flags = {r.id: list(r.flags) for r in chunk.results if r.flags}
        parts.append(chunk.arrays)
        failures += chunk.failures
        flags.update(chunk.flags)
    if current is not None:
        store.add_shard(current, merge_collated(parts, store.kind), failures, flags)
    store.seconds += time.perf_counter() - began
    store.write_manifest()
