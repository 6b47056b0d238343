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
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from matcard.errors import MatcardError
from matcard.featurize.graph import FeaturizationError, GraphArrays, StructureArrays

Featurizer = Any  # GraphFeaturizer | CompositionFeaturizer (kept loose to avoid import cycles)


@dataclass
class ItemResult:
    """One featurized item: its input position, id, arrays and flags."""

    position: int
    id: str
    graph: GraphArrays | None = None  # graph featurizer
    vector: np.ndarray | None = None  # composition featurizer: float32 [F]
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
    results: list[ItemResult]
    failures: list[ItemFailure]


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
        raise MatcardError(f"jobs must be >= 0 (0 = all cores), got {jobs}")
    return jobs


def _prepare(featurizer: Featurizer, payload: Any) -> Any:
    """Parent-side reduction of one payload to what crosses the process boundary."""
    if featurizer.kind == "graph":
        from pymatgen.core import Structure

        if isinstance(payload, Structure):
            return StructureArrays.from_structure(payload)
        return payload
    from pymatgen.core import Structure

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


def _run_chunk(featurizer: Featurizer, start: int, items: list[tuple[str, Any]]) -> ChunkResult:
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
    return ChunkResult(start, start + len(items), results, failures)


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


def _mp_context() -> multiprocessing.context.BaseContext:
    # forkserver: workers start from a clean server process, never from a parent holding torch
    # threads or a Rich refresh thread (fork with live threads can deadlock).
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


def run_featurization(
    featurizer: Featurizer,
    items: Iterable[tuple[str, Any]],
    *,
    jobs: int | None = None,
    chunk_size: int = 256,
    start: int = 0,
    on_chunk: Callable[[ChunkResult], None] | None = None,
) -> Iterator[ChunkResult]:
    """Yield one ChunkResult per chunk, in input order; ``jobs=1`` runs in this process."""
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
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=_mp_context()) as pool:
        try:
            for chunk_start, chunk, early in chunks:
                pending.append((pool.submit(_run_chunk, featurizer, chunk_start, chunk), early))
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
