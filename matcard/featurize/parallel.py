"""Featurize many items in ``jobs`` worker processes, in order, in chunks, with a bounded window.

Items are ``(id, payload)`` pairs; a payload is a pymatgen ``Structure`` (or the graph builder's
``StructureArrays``) for the graph featurizer, or a composition / formula / structure for the
composition featurizer. Structures are reduced to a few NumPy arrays in the parent before they
cross the process boundary (pickling a pymatgen ``Structure`` costs more than building its
graph), and workers send back NumPy arrays, never torch objects, so workers do not import torch.

Per-item failures become ``(position, id, reason)`` entries while the rest proceeds. Chunks are
submitted through a bounded window (a few per worker), so memory stays flat however many items
stream through, and results come back in input order.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from matcard.errors import MatcardError, UsageError
from matcard.featurize.graph import FeaturizationError, GraphArrays, StructureArrays

Featurizer = Any  # GraphFeaturizer | CompositionFeaturizer | ChgnetFeaturizer (loose: no import cycles)
# featurizers that give one vector per item (stored as x [n, F], read back as Data(x=[1, F]))
VECTOR_KINDS: tuple[str, ...] = ("composition", "chgnet")


@dataclass
class ItemResult:
    """One featurized item: its input position, id, arrays and flags."""

    position: int
    id: str
    graph: GraphArrays | None = None  # graph featurizer
    vector: np.ndarray | None = None  # vector featurizers (composition, chgnet): float32 [F]
    flags: list[str] = field(default_factory=list)


@dataclass
class ItemFailure:
    position: int
    id: str
    reason: str


@dataclass
class ChunkResult:
    start: int  # input position of the chunk's first item
    stop: int
    results: list[ItemResult]  # empty when the worker already collated them into ``arrays``
    failures: list[ItemFailure]
    arrays: dict[str, np.ndarray] | None = None  # collate_results(results), built in the worker
    flags: dict[str, list[str]] = field(default_factory=dict)  # id -> flags, with ``arrays``


def collate_results(results: Sequence[ItemResult], kind: str) -> dict[str, np.ndarray]:
    """Concatenate items into flat arrays plus pointers (the layout of a store shard).

    ``ids``, ``position``; graphs: ``z``, ``edge_index`` (per-graph local indices), ``edge_dist``,
    ``edge_offset``, ``edge_vec``, ``x`` (if built), ``node_ptr`` / ``edge_ptr`` [n + 1];
    vectors (composition, chgnet): ``x`` [n, F].
    """
    arrays: dict[str, np.ndarray] = {
        "ids": np.array([str(r.id) for r in results], dtype=str),
        "position": np.array([r.position for r in results], dtype=np.int64),
    }
    if kind in VECTOR_KINDS:
        width = len(results[0].vector) if results else 0  # type: ignore[arg-type]
        matrix = np.stack([r.vector for r in results]) if results else np.zeros((0, width), np.float32)
        arrays["x"] = np.ascontiguousarray(matrix, dtype=np.float32)
        return arrays
    graphs = [r.graph for r in results if r.graph is not None]
    n_nodes = np.array([len(g.z) for g in graphs], dtype=np.int64)
    n_edges = np.array([g.edge_dist.shape[0] for g in graphs], dtype=np.int64)
    arrays["node_ptr"] = np.concatenate(([0], np.cumsum(n_nodes))).astype(np.int64)
    arrays["edge_ptr"] = np.concatenate(([0], np.cumsum(n_edges))).astype(np.int64)

    def cat(parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype: type, axis: int = 0) -> np.ndarray:
        if not parts:
            return np.zeros(empty_shape, dtype=dtype)
        return np.ascontiguousarray(np.concatenate(parts, axis=axis))

    arrays["z"] = cat([g.z for g in graphs], (0,), np.int64)
    arrays["edge_index"] = cat([g.edge_index for g in graphs], (2, 0), np.int64, axis=1)
    arrays["edge_dist"] = cat([g.edge_dist for g in graphs], (0,), np.float32)
    arrays["edge_offset"] = cat([g.edge_offset for g in graphs], (0, 3), np.int64)
    if graphs and all(g.edge_vec is not None for g in graphs):
        arrays["edge_vec"] = cat([g.edge_vec for g in graphs], (0, 3), np.float32)  # type: ignore[misc]
    if graphs and graphs[0].x is not None:
        arrays["x"] = cat([g.x for g in graphs if g.x is not None], (0, 0), np.float32)
    return arrays


def merge_collated(parts: Sequence[dict[str, np.ndarray]], kind: str) -> dict[str, np.ndarray]:
    """Join consecutive collated chunks into one (pointers shifted; empty chunks skipped)."""
    filled = [p for p in parts if len(p["position"])]
    if not filled:
        return parts[0] if parts else collate_results([], kind)
    if len(filled) == 1:
        return filled[0]
    merged = {
        "ids": np.concatenate([p["ids"] for p in filled]),
        "position": np.concatenate([p["position"] for p in filled]),
    }
    if kind in VECTOR_KINDS:
        merged["x"] = np.concatenate([p["x"] for p in filled])
        return merged
    for name, axis in (
        ("z", 0), ("edge_index", 1), ("edge_dist", 0), ("edge_offset", 0), ("edge_vec", 0), ("x", 0)
    ):  # fmt: skip
        if name in filled[0]:
            merged[name] = np.ascontiguousarray(np.concatenate([p[name] for p in filled], axis=axis))
    for ptr in ("node_ptr", "edge_ptr"):
        shifted, offset = [np.zeros(1, dtype=np.int64)], 0
        for p in filled:
            shifted.append(p[ptr][1:] + offset)
            offset += int(p[ptr][-1])
        merged[ptr] = np.concatenate(shifted)
    return merged


def default_jobs() -> int:
    """All cores this process may use (respects CPU affinity / container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_jobs(jobs: int | None) -> int:
    if jobs is None or jobs == 0:
        return default_jobs()
    if jobs < 0:
        raise UsageError(f"jobs must be >= 0 (0 = all cores), got {jobs}")
    return jobs


def _prepare(featurizer: Featurizer, payload: Any) -> Any:
    """Parent-side reduction of one payload to what crosses the process boundary."""
    from pymatgen.core import Structure

    if featurizer.kind == "graph":
        if isinstance(payload, Structure):
            return StructureArrays.from_structure(payload)
        return payload
    if featurizer.kind == "chgnet":
        return payload  # CHGNet builds its own graph from the Structure

    return payload.composition if isinstance(payload, Structure) else payload


def featurize_one(featurizer: Featurizer, position: int, item_id: str, payload: Any) -> ItemResult:
    """Featurize one prepared payload; FeaturizationError (and only data errors) propagate."""
    if payload is None:
        raise FeaturizationError("no structure")
    if featurizer.kind == "graph":
        if not isinstance(payload, StructureArrays):
            payload = StructureArrays.from_structure(payload)
        graph = featurizer.build(payload)
        return ItemResult(position, item_id, graph=graph, flags=list(graph.flags))
    vector = featurizer.features(payload).astype(np.float32)
    return ItemResult(position, item_id, vector=vector)


def _run_batched(
    featurizer: Featurizer, start: int, items: list[tuple[str, Any]]
) -> tuple[list[ItemResult], list[ItemFailure]]:
    """A featurizer with ``features_many`` (CHGNet) takes the whole chunk at once (batched network)."""
    results: list[ItemResult] = []
    failures: list[ItemFailure] = []
    payloads = [payload for _, payload in items]
    for offset, ((item_id, payload), out) in enumerate(
        zip(items, featurizer.features_many(payloads), strict=True)
    ):
        if payload is None:
            out = FeaturizationError("no structure")
        if isinstance(out, Exception):
            failures.append(ItemFailure(start + offset, item_id, str(out) or type(out).__name__))
        else:
            results.append(ItemResult(start + offset, item_id, vector=np.asarray(out, dtype=np.float32)))
    return results, failures


def _run_chunk(
    featurizer: Featurizer, start: int, items: list[tuple[str, Any]], collate: bool = False
) -> ChunkResult:
    if hasattr(featurizer, "features_many"):
        results, failures = _run_batched(featurizer, start, items)
    else:
        results, failures = _run_each(featurizer, start, items)
    if collate:  # one set of arrays crosses the process boundary instead of one object per item
        flags = {r.id: list(r.flags) for r in results if r.flags}
        arrays = collate_results(results, featurizer.kind)
        return ChunkResult(start, start + len(items), [], failures, arrays, flags)
    return ChunkResult(start, start + len(items), results, failures)


def _run_each(
    featurizer: Featurizer, start: int, items: list[tuple[str, Any]]
) -> tuple[list[ItemResult], list[ItemFailure]]:
    results: list[ItemResult] = []
    failures: list[ItemFailure] = []
    for offset, (item_id, payload) in enumerate(items):
        position = start + offset
        try:
            results.append(featurize_one(featurizer, position, item_id, payload))
        except FeaturizationError as error:
            failures.append(ItemFailure(position, item_id, str(error)))
        except (ValueError, TypeError, KeyError, IndexError, ArithmeticError, MemoryError) as error:
            # pymatgen / matminer raise plain exceptions on odd inputs: a per-item failure too
            failures.append(ItemFailure(position, item_id, f"{type(error).__name__}: {error}"))
    return results, failures


def _chunks(
    featurizer: Featurizer, items: Iterable[tuple[str, Any]], chunk_size: int, start: int
) -> Iterator[tuple[int, list[tuple[str, Any]], list[ItemFailure]]]:
    """Group items into chunks, preparing payloads in the parent (failures kept per position)."""
    chunk: list[tuple[str, Any]] = []
    early: list[ItemFailure] = []
    chunk_start = start
    for position, (item_id, payload) in enumerate(items, start=start):
        try:
            chunk.append((item_id, _prepare(featurizer, payload)))
        except (FeaturizationError, ValueError, TypeError, KeyError, AttributeError) as error:
            early.append(ItemFailure(position, item_id, str(error) or type(error).__name__))
            chunk.append((item_id, None))  # keeps positions aligned; the worker reports it too
        if len(chunk) == chunk_size:
            yield chunk_start, chunk, early
            chunk_start, chunk, early = position + 1, [], []
    if chunk:
        yield chunk_start, chunk, early


def _merge_early(result: ChunkResult, early: list[ItemFailure]) -> ChunkResult:
    if early:
        by_position = {f.position: f for f in early}
        result.failures = [by_position.get(f.position, f) for f in result.failures]
    return result


def _mp_context(kind: str) -> multiprocessing.context.BaseContext:
    # forkserver: workers start from a clean server process, never from a parent holding torch
    # threads or a Rich refresh thread (fork with live threads can deadlock). The server imports
    # the featurizer's modules once, so each worker is a cheap fork of an already-warm process
    # (only effective if this process has not started its forkserver yet).
    if sys.platform.startswith("linux"):
        context = multiprocessing.get_context("forkserver")
        preload = ["matcard.featurize.graph", "pymatgen.optimization.neighbors"]
        if kind == "composition":
            preload += ["matcard.featurize.composition", "matminer.featurizers.composition"]
        if kind == "chgnet":
            preload += ["matcard.featurize.chgnet"]
        context.set_forkserver_preload(preload)
        return context
    return multiprocessing.get_context("spawn")


def _worker_init() -> None:
    """Workers ignore Ctrl-C: the parent stops the pool (completed shards are already saved)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_featurization(
    featurizer: Featurizer,
    items: Iterable[tuple[str, Any]],
    *,
    jobs: int | None = None,
    chunk_size: int = 256,
    start: int = 0,
    on_chunk: Callable[[ChunkResult], None] | None = None,
    collate: bool = False,
) -> Iterator[ChunkResult]:
    """Yield one ChunkResult per chunk, in input order; ``jobs=1`` runs in this process.

    ``collate=True``: workers return each chunk as collated arrays (``ChunkResult.arrays``)."""
    n_jobs = resolve_jobs(jobs)
    chunks = _chunks(featurizer, items, chunk_size, start)
    if n_jobs == 1:
        for chunk_start, chunk, early in chunks:
            result = _merge_early(_run_chunk(featurizer, chunk_start, chunk), early)
            if on_chunk:
                on_chunk(result)
            yield result
        return

    window = 3 * n_jobs  # chunks in flight: keeps workers busy, bounds memory
    pending: deque[tuple[Future[ChunkResult], list[ItemFailure]]] = deque()
    with ProcessPoolExecutor(
        max_workers=n_jobs, mp_context=_mp_context(featurizer.kind), initializer=_worker_init
    ) as pool:
        try:
            for chunk_start, chunk, early in chunks:
                pending.append((pool.submit(_run_chunk, featurizer, chunk_start, chunk, collate), early))
                while len(pending) >= window:
                    future, early_failures = pending.popleft()
                    result = _merge_early(future.result(), early_failures)
                    if on_chunk:
                        on_chunk(result)
                    yield result
            while pending:
                future, early_failures = pending.popleft()
                result = _merge_early(future.result(), early_failures)
                if on_chunk:
                    on_chunk(result)
                yield result
        except BrokenProcessPool as error:
            raise MatcardError(
                "a featurization worker died (out of memory or a crash in compiled code); "
                "completed shards are kept, rerun to resume"
            ) from error
        finally:
            for future, _ in pending:
                future.cancel()
