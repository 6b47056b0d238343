"""Parser worker pool with a per-structure watchdog; in-process mode with SIGALRM."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from matcard.console import make_progress
from matcard.structures.parsers import _parse_item
from matcard.structures.records import Outcome, ReadFailure, StructureRecord, _Item, _Options
from matcard.structures.transport import for_transport, pack_outcomes, unpack_outcomes


# --------------------------------------------------------------------------------------------
# Worker pool with a watchdog
# --------------------------------------------------------------------------------------------
def _worker_main(conn: multiprocessing.connection.Connection, options: _Options, position: Any) -> None:
    """Worker loop: receive batches of (index, item); send one list of (index, outcomes) per batch.

    One message per batch, not per item: the parent wakes, selects and unpickles once per batch (at
    thousands of structures a second those per-message costs were a third of the parent's time).
    ``position`` (shared memory) says which item is being parsed and since when, so the parent's
    watchdog times, and blames, the exact item even though its neighbours' results are not sent yet.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
    warnings.simplefilter("ignore")
    while True:
        try:
            batch = conn.recv()
        except EOFError:
            return
        if batch is None:
            return
        results = []
        for index, fields in batch:
            item = _Item(*fields)  # see _Worker.send
            _mark(position, index)
            outcomes = [for_transport(outcome) for outcome in _parse_item(item, options)]
            results.append((index, _prepared(outcomes, options)))
        _prepared_batch([outcome for _, outcomes in results for outcome in outcomes], options)
        conn.send(pack_outcomes(results))
        _mark(position, None)


def _mark(position: Any, index: int | None) -> None:
    """Publish the item being parsed (start time last, so a reader never pairs it with a stale index)."""
    position[1] = 0.0
    if index is not None:
        position[0] = float(index)
        position[1] = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on the machine


def _current(position: Any) -> tuple[int, float] | None:
    """(index, started) of the item a worker is parsing, or None between batches."""
    started = position[1]
    index = int(position[0])
    if started <= 0.0 or position[1] != started:  # idle, or moving on to the next item right now
        return None
    return index, started


def _prepared(outcomes: list[Outcome], options: _Options) -> list[Outcome]:
    """The caller's ``prepare`` hook on each outcome; a hook that raises leaves the outcome as it was
    (the hook is an optimisation: the caller does the work itself for an unprepared record)."""
    if options.prepare is None:
        return outcomes
    prepared = []
    for outcome in outcomes:
        try:
            prepared.append(options.prepare(outcome))
        except Exception:
            prepared.append(outcome)
    return prepared


BATCH_ITEMS = 32  # entries per worker batch (seq // BATCH_ITEMS: its block)


def _block_ready(todo: deque[tuple[int, _Item]], seq: int, exhausted: bool) -> bool:
    """Whether the first block in ``todo`` is whole: every entry of it pulled (or the input ended)."""
    return bool(todo) and (exhausted or seq >= (todo[0][0] // BATCH_ITEMS + 1) * BATCH_ITEMS)


def _next_block(todo: deque[tuple[int, _Item]]) -> list[tuple[int, _Item]]:
    """The items of the first block in ``todo`` (re-queued leftovers of a killed worker included)."""
    block = todo[0][0] // BATCH_ITEMS
    batch = []
    while todo and todo[0][0] // BATCH_ITEMS == block:
        batch.append(todo.popleft())
    return batch


def _prepared_batch(outcomes: list[Outcome], options: _Options) -> None:
    """The ``prepare`` hook's ``prepare_batch`` on a worker's whole batch, when it has one (screening
    predicts there); like the per-outcome hook, one that raises leaves the outcomes as they were."""
    hook = getattr(options.prepare, "prepare_batch", None)
    if hook is not None:
        with contextlib.suppress(Exception):
            hook(outcomes)


def _mp_context() -> multiprocessing.context.BaseContext:
    """Fork where available: a new worker (also the replacement of a killed one) costs a fork, not an
    interpreter start, and scripts without a ``__main__`` guard still work (forkserver and spawn
    re-import the main module). The parser modules are imported first so children inherit them."""
    import gemmi  # noqa: F401  (the fast CIF path's reader, inherited by the children)
    import pymatgen.io.cif
    import pymatgen.io.vasp  # noqa: F401

    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")  # pragma: no cover - non-POSIX


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class _Worker:
    def __init__(self, ctx: multiprocessing.context.BaseContext, options: _Options) -> None:
        parent_conn, child_conn = ctx.Pipe()
        self.position = ctx.RawArray("d", 2)  # (index, started) of the item being parsed; see _mark
        self.process = ctx.Process(
            target=_worker_main, args=(child_conn, options, self.position), daemon=True
        )
        self.process.start()
        child_conn.close()
        self.conn = parent_conn
        self.pending: dict[int, _Item] = {}  # sent, no result back yet (insertion order = work order)

    def send(self, batch: list[tuple[int, _Item]], keep_properties: bool) -> None:
        self.pending.update(batch)
        # Plain field tuples (the worker makes the items again); without a table row's other columns
        # unless the prepare hook reads them: they are attached again on the way back.
        width = len(_Item._fields) - (0 if keep_properties else 1)
        self.conn.send([(index, item[:width]) for index, item in batch])

    def culprit(self) -> tuple[int, float | None]:
        """The item the worker is on (index, seconds on it), else the oldest pending item (None)."""
        current = _current(self.position)
        if current is not None and current[0] in self.pending:
            return current[0], time.monotonic() - current[1]
        return next(iter(self.pending)), None

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        self.process.join(timeout=5)
        with contextlib.suppress(Exception):
            self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(None)
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.kill()
        with contextlib.suppress(Exception):
            self.conn.close()


def _ordered(
    entries: Iterable[tuple[str, Any]],
    *,
    options: _Options,
    timeout: float | None,
    workers: int | None,
    progress: bool,
    description: str,
    total: int | None = None,
) -> Iterator[tuple[str, Any]]:
    """Run work entries and yield results in input order.

    ``entries``: ("item", _Item) to parse, ("outcome", Outcome) passed through, ("skipped",
    ReadFailure). Yields ("outcomes", list[Outcome]) or ("skipped", ReadFailure), one per entry.
    Entries are pulled lazily (a bounded window ahead of the output), so a huge table streams.
    """
    if workers is None:
        workers = min(available_cpus(), 8)
    if workers > 0 and multiprocessing.current_process().daemon:
        workers = 0  # a daemonic process (e.g. a Pool worker) may not start children: parse here
    with make_progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(description, total=total)
        if workers <= 0:
            for kind, payload in entries:
                yield _run_inline(kind, payload, options, timeout)
                bar.advance(task)
            return
        yield from _run_pool(iter(entries), options, timeout, workers, bar, task)


# The per-structure limit grows with the input: ``timeout`` seconds per TIMEOUT_SCALE_BYTES of CIF /
# POSCAR text (at least ``timeout``), so a valid 5,000-atom CIF is not rejected on a busy machine.
TIMEOUT_SCALE_BYTES = 50_000


def item_time_limit(item: _Item, timeout: float) -> float:
    """Seconds allowed for one work item under the base ``timeout``."""
    size = 0
    if item.text is not None:
        size = len(item.text)
    elif item.path is not None:
        with contextlib.suppress(OSError):
            size = os.path.getsize(item.path)
    return timeout * max(1.0, size / TIMEOUT_SCALE_BYTES)


def timeout_reason(limit: float) -> str:
    return f"timeout after {limit:.3g}s (allow more with --timeout; the limit grows with file size)"


def _run_inline(kind: str, payload: Any, options: _Options, timeout: float | None) -> tuple[str, Any]:
    if kind == "skipped":
        return ("skipped", payload)
    if kind == "outcome":
        return ("outcomes", [payload])
    try:
        limit = None if timeout is None else item_time_limit(payload, timeout)
        with _alarm(limit):
            return ("outcomes", _prepared(_parse_item(payload, options), options))
    except _AlarmTimeout:
        return ("outcomes", [ReadFailure(payload.source, timeout_reason(limit or 0.0))])


def _run_pool(
    entries: Iterator[tuple[str, Any]],
    options: _Options,
    timeout: float | None,
    workers: int,
    bar: Any,
    task: Any,
) -> Iterator[tuple[str, Any]]:
    """The watchdog pool behind :func:`_ordered` (workers are forked on demand, up to ``workers``)."""
    ctx: multiprocessing.context.BaseContext | None = None
    pool: list[_Worker] = []
    todo: deque[tuple[int, _Item]] = deque()
    ready: dict[int, tuple[str, Any]] = {}
    max_ahead = 64 * workers + 256  # bounds memory: entries pulled but not yet yielded
    next_seq = seq = 0
    exhausted = False
    keep_properties = options.prepare is not None and getattr(options.prepare, "reads_properties", True)

    def replace(worker: _Worker, index: int, reason: str) -> None:
        """Kill a worker, fail the item it was on, re-queue the rest of what it held (results of a
        batch travel together, so finished neighbours of the culprit are parsed again)."""
        ready[index] = ("outcomes", [ReadFailure(worker.pending.pop(index).source, reason)])
        todo.extendleft(reversed(worker.pending.items()))
        worker.pending.clear()
        worker.kill()
        pool.remove(worker)

    try:
        while True:
            while not exhausted and seq - next_seq < max_ahead:
                try:
                    kind, payload = next(entries)
                except StopIteration:
                    exhausted = True
                    bar.update(task, total=seq)
                    break
                if kind == "item":
                    todo.append((seq, payload))
                elif kind == "outcome":
                    ready[seq] = ("outcomes", [payload])
                else:
                    ready[seq] = ("skipped", payload)
                seq += 1
            emitted = next_seq
            while next_seq in ready:
                yield ready.pop(next_seq)
                next_seq += 1
            if next_seq > emitted:  # once per batch of results, not per structure (a few us each)
                bar.advance(task, next_seq - emitted)
            if exhausted and next_seq == seq:
                return
            if not todo and not any(w.pending for w in pool):
                continue  # everything pulled so far was emitted: pull more
            if ctx is None:
                ctx = _mp_context()
            # A batch is one block of BATCH_ITEMS consecutive entries, whatever the timing: a hook
            # that works per batch (screening predicts there) then sees the same batches every run.
            # A second batch is queued behind the one running (results come back a batch at a time),
            # so a worker never waits on us; fewer queued near the end, so no worker is starved. A
            # new worker starts only for work the others cannot take.
            size = max(1, min(BATCH_ITEMS, len(todo) // (4 * workers)))
            for worker in [*pool, None] if len(pool) < workers else pool:
                if worker is None:
                    if not _block_ready(todo, seq, exhausted):
                        break
                    worker = _Worker(ctx, options)
                    pool.append(worker)
                while _block_ready(todo, seq, exhausted) and len(worker.pending) <= size:
                    worker.send(_next_block(todo), keep_properties)
            busy = {w.conn: w for w in pool if w.pending}
            wait_for = 0.5 if timeout is None else max(0.01, min(0.5, timeout / 4))
            for conn in multiprocessing.connection.wait(list(busy), timeout=wait_for):
                worker = busy[conn]
                try:
                    results = unpack_outcomes(conn.recv())
                except (EOFError, OSError):
                    # The worker died (segfault, OOM kill): blame the item it was on, retry the rest.
                    worker.process.join(timeout=1)
                    culprit, _ = worker.culprit()
                    replace(worker, culprit, f"parser crashed (exit code {worker.process.exitcode})")
                    continue
                for index, outcomes in results:
                    item = worker.pending.pop(index, None)
                    if item is None:  # pragma: no cover - protocol invariant
                        raise RuntimeError(f"worker returned item {index}, which it was not given")
                    if item.properties and not keep_properties:
                        _with_properties(outcomes, item.properties)
                    ready[index] = ("outcomes", outcomes)
            if timeout is not None:
                for worker in [w for w in pool if w.pending]:
                    culprit, seconds = worker.culprit()
                    if seconds is None or seconds <= timeout:  # the limit is never below timeout
                        continue
                    limit = item_time_limit(worker.pending[culprit], timeout)
                    if seconds > limit:
                        replace(worker, culprit, timeout_reason(limit))
    finally:
        for worker in pool:
            if worker.pending:
                worker.kill()
            else:
                worker.stop()


def _with_properties(outcomes: list[Outcome], properties: tuple[tuple[str, Any], ...]) -> None:
    """Attach a row's other columns to the records parsed from it, as the parser would have."""
    for outcome in outcomes:
        if isinstance(outcome, StructureRecord):
            outcome.properties = {**dict(properties), **outcome.properties}


class _AlarmTimeout(BaseException):  # not an Exception: parsers must not swallow it
    pass


@contextlib.contextmanager
def _alarm(timeout: float | None) -> Iterator[None]:
    """Best-effort in-process time limit (main thread only) for workers=0."""
    if timeout is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _AlarmTimeout

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def parse_items(
    items: Sequence[_Item],
    *,
    options: _Options,
    timeout: float | None,
    workers: int | None,
    progress: bool = False,
    description: str = "Reading structures",
) -> Iterator[tuple[int, list[Outcome]]]:
    """Parse work items (pool or inline), yielding (index, outcomes) in input order."""
    results = _ordered(
        (("item", item) for item in items),
        options=options,
        timeout=timeout,
        workers=workers,
        progress=progress,
        description=description,
        total=len(items),
    )
    for index, (_, outcomes) in enumerate(results):
        yield index, outcomes
