"""How a reader worker's batch of outcomes travels to the caller.

A worker parses a batch of items and sends every outcome back in one message. Most outcomes are
:class:`CompactRecord`\\ s holding one structure as arrays; pickled one by one, each costs a few
microseconds to reduce and rebuild on either end, which at ten thousand structures a second is a
sizeable share of the caller's time. :func:`pack_outcomes` sends such records column-wise instead:
every structure's floats in one byte string, every atomic number in another, and one list per
record field. :func:`unpack_outcomes` rebuilds the records around views of one array per batch.
Anything else (failures, Structure-holding records, several records from one item) is pickled as it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from matcard.structures.compact import CompactStructure, from_flat
from matcard.structures.records import CompactRecord, Outcome, StructureRecord

Results = list[tuple[int, list[Outcome]]]  # (item index, its outcomes) for a batch, in work order

# A CompactRecord's attributes: the dataclass fields, the arrays and the cached Structure slot.
_RECORD_FIELDS = ("id", "source", "label", "flags", "warnings", "properties", "features")
_RECORD_KEYS = frozenset({*_RECORD_FIELDS, "compact", "_structure"})


def for_transport(outcome: Outcome) -> Outcome:
    """A record whose Structure can travel as arrays does (a fraction of the pickling cost on both
    ends); the caller builds the Structure again only when asked for it, identical to this one."""
    if type(outcome) is StructureRecord:
        compact = CompactStructure.from_structure(outcome.structure)
        if compact is not None:
            return CompactRecord.from_record(outcome, compact)
    return outcome


def _packable(outcomes: list[Outcome]) -> bool:
    if len(outcomes) != 1 or type(outcomes[0]) is not CompactRecord:
        return False
    state = outcomes[0].__dict__
    return (
        state.get("_structure") is None and state.get("compact") is not None and state.keys() <= _RECORD_KEYS
    )


def pack_outcomes(results: Results) -> tuple[Any, ...]:
    """``results`` as a picklable tuple: single array-holding records column-wise, the rest as is."""
    positions: list[int] = []
    indices: list[int] = []
    states: list[dict[str, Any]] = []
    others: list[tuple[int, int, list[Outcome]]] = []
    for position, (index, outcomes) in enumerate(results):
        if _packable(outcomes):
            positions.append(position)
            indices.append(index)
            states.append(outcomes[0].__dict__)
        else:
            others.append((position, index, outcomes))
    structures: list[CompactStructure] = [state["compact"] for state in states]
    arrays = [a.ravel() for s in structures for a in (s.lattice, s.frac_coords)]
    floats = np.concatenate(arrays, dtype=np.float64) if arrays else np.empty(0)
    numbers = np.concatenate([s.numbers for s in structures], dtype=np.int64) if structures else np.empty(0)
    fields = [[state.get(name) for state in states] for name in _RECORD_FIELDS]
    labels = [s.labels for s in structures]
    return (len(results), positions, indices, fields, labels, floats.tobytes(), numbers.tobytes(), others)


def unpack_outcomes(packed: tuple[Any, ...]) -> Results:
    """Inverse of :func:`pack_outcomes`: the same results, in the same order. The arrays of a batch's
    records are writable views of one array per batch (copied once from the message)."""
    size, positions, indices, fields, labels, float_bytes, number_bytes, others = packed
    results: list[Any] = [None] * size
    floats = np.frombuffer(float_bytes, dtype=np.float64).copy()
    numbers = np.frombuffer(number_bytes, dtype=np.int64).copy()
    at_float = at_number = 0
    new = object.__new__
    for k, (position, index) in enumerate(zip(positions, indices, strict=True)):
        site_labels = labels[k]
        n = len(site_labels)
        end = at_float + 9 + 3 * n
        structure = from_flat(floats[at_float:end], numbers[at_number : at_number + n], site_labels)
        at_float, at_number = end, at_number + n
        record = new(CompactRecord)
        record.__dict__.update(zip(_RECORD_FIELDS, [column[k] for column in fields], strict=True))
        record.__dict__.update(compact=structure, _structure=None)
        results[position] = (index, [record])
    for position, index, outcomes in others:
        results[position] = (index, outcomes)
    return results
