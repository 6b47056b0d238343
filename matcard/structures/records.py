"""Public records (StructureRecord, ReadFailure, ReadResult) and the picklable work items."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from matcard.structures.compact import CompactStructure

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure


DisorderPolicy = Literal["skip", "keep", "majority"]
DISORDER_POLICIES: tuple[str, ...] = ("skip", "keep", "majority")


# --------------------------------------------------------------------------------------------
# Public records
# --------------------------------------------------------------------------------------------
@dataclass
class StructureRecord:
    id: str  # file stem, CIF block name, db row id, CSV id column...
    source: str  # path (and block / row) it came from
    structure: Structure  # pymatgen
    label: object | None = None
    flags: tuple[str, ...] = ()  # e.g. "cif_warning:...", "disordered_kept", "majority_species"
    warnings: tuple[str, ...] = ()  # raw parser warnings behind the flags
    properties: dict[str, Any] = field(default_factory=dict)  # other columns / ASE key-value pairs


class CompactRecord(StructureRecord):
    """A StructureRecord that holds its structure as flat arrays and builds the Structure on first
    access of ``.structure`` (then keeps it).

    Reader workers hand records back in this form: pickling the arrays is a small fraction of
    pickling a Structure, and callers that work from arrays (screening with the graph featurizer)
    read ``.compact`` and never build one. Constructed like a StructureRecord, with ``structure``
    a :class:`CompactStructure` (or a Structure: then it is simply held).
    """

    compact: CompactStructure | None
    # What a reader ``prepare`` hook computed from the arrays in the worker that parsed them
    # (screening: the graph), so the caller need not; None when no hook ran.
    features: Any = None

    @property  # type: ignore[override]
    def structure(self) -> Structure:
        built = self.__dict__.get("_structure")
        if built is None:
            assert self.compact is not None
            built = self.compact.to_structure()
            self.__dict__["_structure"] = built
        return built

    @structure.setter
    def structure(self, value: Structure | CompactStructure) -> None:
        # the dataclass __init__ assigns through here; a later assignment replaces the arrays too
        if isinstance(value, CompactStructure):
            self.__dict__.update(compact=value, _structure=None)
        else:
            self.__dict__.update(compact=None, _structure=value)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if state.get("compact") is not None:
            state["_structure"] = None  # the arrays travel; a receiver rebuilds only if it needs to
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @classmethod
    def from_record(cls, record: StructureRecord, compact: CompactStructure) -> CompactRecord:
        """``record`` with its structure replaced by ``compact`` (the same structure as arrays)."""
        return cls(
            id=record.id,
            source=record.source,
            structure=compact,
            label=record.label,
            flags=record.flags,
            warnings=record.warnings,
            properties=record.properties,
        )


def structure_arrays_of(record: StructureRecord) -> CompactStructure | None:
    """The record's structure as arrays when it carries them (no Structure is built), else None."""
    if isinstance(record, CompactRecord) and record.__dict__.get("_structure") is None:
        return record.compact
    return None


@dataclass
class ReadFailure:
    source: str
    reason: str  # a short plain sentence: "disordered", "timeout after 10s (...)", "the cell is nearly flat"
    detail: str = ""  # the raw parser exception ("ValueError: ...") behind the reason, when there was one

    def to_dict(self) -> dict[str, str]:
        return {"source": str(self.source), "reason": self.reason, "detail": self.detail}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReadFailure:
        """Inverse of :meth:`to_dict`; caches written before ``detail`` existed have none."""
        return cls(str(data["source"]), str(data["reason"]), str(data.get("detail", "") or ""))


@dataclass
class ReadResult:
    records: list[StructureRecord]
    failures: list[ReadFailure]
    # Files recognised as not holding structures (label files, notes, tables of metadata).
    skipped: list[ReadFailure] = field(default_factory=list)

    @property
    def structures(self) -> list[Structure]:
        return [record.structure for record in self.records]

    @property
    def ids(self) -> list[str]:
        return [record.id for record in self.records]

    @property
    def labels(self) -> list[object | None]:
        return [record.label for record in self.records]

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class Skipped(ReadFailure):
    """A source that holds no structure by design (label file, notes); not counted as a failure."""


# --------------------------------------------------------------------------------------------
# Work items: what a worker parses. Everything here must be picklable.
# --------------------------------------------------------------------------------------------
class _Item(NamedTuple):
    """One unit of work. A named tuple, not a dataclass: tables make one per row in the caller and
    workers unpickle one per structure, and a tuple is a fraction of the cost on both ends."""

    kind: str  # "cif" | "poscar" | "xyz" | "json" | "cif_text" | "poscar_text" | "structure_dict"
    source: str
    path: str | None = None
    text: str | None = None
    id: str | None = None
    label: object | None = None
    properties: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class _Options:
    disorder: str = "skip"
    occupancy_tolerance: float = 1.0
    site_tolerance: float = 1e-4
    cif_parser: str = "fast"  # "fast" (gemmi, pymatgen fallback) | "pymatgen" (the reference path)
    # Applied to every outcome in the process that parsed it (see iter_structures); never raises.
    prepare: Callable[[Outcome], Outcome] | None = None


Outcome = StructureRecord | ReadFailure
