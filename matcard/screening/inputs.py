"""The input side of a screen: records and failures of every input, in order, read ahead.

Paths go through the structure reader (its worker processes parse, and with an in-process backend
also build the graphs: :func:`reader_hook`); registry datasets give their stored structures; a
background thread drains the reader into a bounded queue so that parsing overlaps the shards.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Generator, Iterator
from typing import Any

from matcard.screening.backends import Backend
from matcard.screening.fingerprint import is_record, is_structure_object
from matcard.screening.worker import GraphPreparer

PREFETCH_ITEMS = 1024  # parsed structures buffered between the reader thread and the shard loop


def reader_hook(backend: Backend, model: Any) -> GraphPreparer | None:
    """The reader's ``prepare`` hook for this backend and model: graphs built in the reader's
    workers when the shards run in this process and the featurizer works from arrays, else None."""
    featurizer = getattr(model, "featurizer", None)
    if backend.prepare_in_reader and getattr(featurizer, "accepts_arrays", False):
        return GraphPreparer(featurizer, model=model if _predicts_in_reader(model) else None)
    return None


def _predicts_in_reader(model: Any) -> bool:
    """A model the reader's (forked) workers can run on the graphs they build: logits from graph
    arrays, a decision layer to apply to them in the caller, and weights on the CPU (a CUDA
    context does not survive a fork)."""
    device = getattr(model, "device", None)
    return (
        hasattr(model, "decide_logits")
        and hasattr(model, "predict_logits_data")
        and bool(getattr(model, "accepts_graph_arrays", False))
        and getattr(device, "type", None) == "cpu"
    )


def iter_items(sources: list[Any], disorder: str, timeout: float, prepare: Any) -> Generator[Any, None, None]:
    """Records and failures of ``sources`` in input order, read ahead by a background thread."""
    return prefetch(_read_sources(sources, disorder, timeout, prepare), PREFETCH_ITEMS)


def _read_sources(sources: list[Any], disorder: str, timeout: float, prepare: Any = None) -> Iterator[Any]:
    """Records and failures of every input in order; consecutive paths share one reader pool
    (``prepare``: the reader hook that builds graphs in its workers, or None)."""
    from matcard.structures import iter_structures

    for_reader: list[Any] = []
    for source in [*sources, None]:
        if isinstance(source, str) or is_structure_object(source):
            for_reader.append(source)
            continue
        if for_reader:
            yield from iter_structures(*for_reader, disorder=disorder, timeout=timeout, prepare=prepare)
            for_reader = []
        if source is None:
            break
        if is_record(source):
            yield source
        else:
            yield from _dataset_items(source)


_END = object()


def prefetch(iterator: Iterator[Any], maxsize: int) -> Generator[Any, None, None]:
    """Drain ``iterator`` in a background thread into a bounded queue.

    The reader's parser processes only run ahead as far as their pipes allow; a thread that keeps
    draining them lets parsing overlap with featurizing and predicting in this process (torch and
    the neighbour search release the GIL), while the queue bound keeps memory flat.
    """
    items: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
    stop = threading.Event()

    def pump() -> None:
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
        except BaseException as exc:  # handed to the consumer, raised there
            items.put((_END, exc))
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # stops the reader's worker processes
        items.put((_END, None))

    thread = threading.Thread(target=pump, name="matcard-screen-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if isinstance(item, tuple) and len(item) == 2 and item[0] is _END:
                if item[1] is not None:
                    raise item[1]
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a pump waiting on a full queue, then let it finish
            with contextlib.suppress(queue.Empty):
                items.get(timeout=0.1)


def _dataset_items(dataset: Any) -> Iterator[Any]:
    """Failures recorded when the dataset was parsed, then its structures one at a time."""
    from matcard.structures import StructureRecord

    yield from dataset.failures
    store = dataset.store
    sources = dataset.table["source"].tolist() if "source" in dataset.table.columns else None
    for index, item_id in enumerate(dataset.ids):
        source = str(sources[index]) if sources is not None else f"{dataset.name}#row={index}"
        flags = tuple(store.flags[index]) if index < len(store.flags) else ()
        yield StructureRecord(id=item_id, source=source, structure=store.structure(index), flags=flags)
