"""Label recipes: a :class:`Task` turns a dataset's table (and, if needed, its structures) into
integer labels and class names.

Recipes
    ``CrystalSystemTask``  seven classes ``triclinic`` ... ``cubic`` (always all seven, in that order,
                           so an index means the same system in every dataset), from a space-group
                           column when there is one, otherwise from spglib with a configurable symprec.
    ``ThresholdTask``      binary: ``column <op> value`` is the positive class (index 1).
    ``RangeTask``          binary: ``low <= column <= high`` is the positive class (index 1).
    ``BinsTask``           ``k`` inner edges give ``k + 1`` ordered classes.
    ``CategoricalTask``    one class per value of a column (sorted, or in a given order / mapping).

Each task is serialisable (``to_dict`` / ``task_from_dict``) so that model bundles can rebuild it,
and ``parse_task`` reads the compact CLI spelling::

    crystal_system            crystal_system:symprec=0.01     band_gap==0      e_above_hull<=0.05
    500<=Tg<=600              bins:band_gap:0.5,2,4           categorical:label
"""

from __future__ import annotations

import itertools
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from matcard.errors import ConfigError, MatcardError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pymatgen.core import Structure

CRYSTAL_SYSTEMS: tuple[str, ...] = (
    "triclinic",
    "monoclinic",
    "orthorhombic",
    "tetragonal",
    "trigonal",
    "hexagonal",
    "cubic",
)
# Upper space-group number of each crystal system (International Tables).
_SYSTEM_UPPER_BOUNDS = (2, 15, 74, 142, 167, 194, 230)
SPACEGROUP_COLUMN_CANDIDATES = (
    "spacegroup.number",
    "spacegroup_number",
    "space_group_number",
    "spg_number",
    "sg_number",
    "space_group",
    "spacegroup",
)


def crystal_system_index(spacegroup_number: int) -> int:
    """Index into CRYSTAL_SYSTEMS for an International Tables space-group number (1-230)."""
    number = int(spacegroup_number)
    if not 1 <= number <= 230:
        raise ValueError(f"space-group number must be in 1..230, got {spacegroup_number}")
    return next(i for i, upper in enumerate(_SYSTEM_UPPER_BOUNDS) if number <= upper)


def crystal_system(spacegroup_number: int) -> str:
    return CRYSTAL_SYSTEMS[crystal_system_index(spacegroup_number)]


@dataclass
class Labels:
    """Integer labels (``y[i]`` indexes ``class_names``) for every row of a dataset."""

    y: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        self.y = np.asarray(self.y, dtype=np.int64)
        if self.y.ndim != 1:
            raise ValueError("labels must be one-dimensional")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= len(self.class_names)):
            raise ValueError("label index out of range of class_names")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def counts(self) -> np.ndarray:
        return np.bincount(self.y, minlength=len(self.class_names))

    def class_counts(self) -> dict[str, int]:
        return {name: int(n) for name, n in zip(self.class_names, self.counts(), strict=True)}

    @property
    def imbalance_ratio(self) -> float:
        """Largest class over smallest non-empty class (inf never: empty classes are ignored)."""
        present = self.counts()[self.counts() > 0]
        return float(present.max() / present.min()) if len(present) else float("nan")

    def subset(self, indices: Sequence[int] | np.ndarray) -> Labels:
        return Labels(self.y[np.asarray(indices, dtype=np.int64)], list(self.class_names))


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------
StructuresFn = Callable[[], "list[Structure]"]


@dataclass(frozen=True)
class Task:
    """Base class: ``compute(table, structures)`` -> Labels."""

    name: str
    description: str = ""

    kind: ClassVar[str] = "task"

    def compute(self, table: pd.DataFrame, structures: StructuresFn | None = None) -> Labels:
        raise NotImplementedError

    @property
    def class_names(self) -> list[str] | None:
        """Class names when they are fixed by the recipe (None when they depend on the data)."""
        return None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind
        return data

    # shared helpers
    def _column(self, table: pd.DataFrame, column: str) -> pd.Series:
        if column not in table.columns:
            raise UsageError(
                f"task {self.name!r} needs column {column!r}, which this dataset does not have "
                f"(columns: {', '.join(map(str, table.columns))})"
            )
        values = table[column]
        missing = int(values.isna().sum())
        if missing:
            raise MatcardError(f"task {self.name!r}: column {column!r} has {missing} missing value(s)")
        return values


@dataclass(frozen=True)
class CrystalSystemTask(Task):
    """Crystal system from a space-group column, else from spglib (``symprec`` in Å)."""

    name: str = "crystal_system"
    description: str = "crystal system (7 classes)"
    spacegroup_column: str | None = None
    symprec: float = 0.01
    angle_tolerance: float = 5.0

    kind: ClassVar[str] = "crystal_system"

    @property
    def class_names(self) -> list[str]:
        return list(CRYSTAL_SYSTEMS)

    def find_column(self, table: pd.DataFrame) -> str | None:
        if self.spacegroup_column is not None:
            return self.spacegroup_column
        return next((c for c in SPACEGROUP_COLUMN_CANDIDATES if c in table.columns), None)

    def compute(self, table: pd.DataFrame, structures: StructuresFn | None = None) -> Labels:
        column = self.find_column(table)
        if column is not None:
            numbers = self._column(table, column).to_numpy()
        else:
            if structures is None:
                raise UsageError(f"task {self.name!r} needs a space-group column or structures")
            numbers = self.spacegroup_numbers(structures())
        try:
            y = np.fromiter((crystal_system_index(n) for n in numbers), dtype=np.int64, count=len(numbers))
        except ValueError as err:
            raise MatcardError(f"task {self.name!r}: {err}") from err
        return Labels(y, list(CRYSTAL_SYSTEMS))

    def spacegroup_numbers(self, structures: Sequence[Structure], workers: int | None = None) -> np.ndarray:
        """Space-group numbers from spglib; large inputs are split over forked worker processes."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from matcard.structures import available_cpus

        n_workers = min(available_cpus(), 8) if workers is None else workers
        parallel = (
            n_workers > 1
            and len(structures) >= PARALLEL_SPGLIB_MIN
            and "fork" in multiprocessing.get_all_start_methods()
            and not multiprocessing.current_process().daemon
        )
        if not parallel:
            return _spacegroup_numbers(list(structures), self.symprec, self.angle_tolerance, 0)
        chunk = -(-len(structures) // (4 * n_workers))
        starts = range(0, len(structures), chunk)
        with ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = pool.map(
                _spacegroup_numbers,
                [list(structures[i : i + chunk]) for i in starts],
                [self.symprec] * len(starts),
                [self.angle_tolerance] * len(starts),
                list(starts),
            )
            return np.concatenate(list(parts))


PARALLEL_SPGLIB_MIN = 500  # below this, forking workers costs more than it saves


def _spacegroup_numbers(
    structures: list[Structure], symprec: float, angle_tolerance: float, offset: int
) -> np.ndarray:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    numbers = np.empty(len(structures), dtype=np.int64)
    for i, structure in enumerate(structures):
        try:
            analyzer = SpacegroupAnalyzer(structure, symprec=symprec, angle_tolerance=angle_tolerance)
            numbers[i] = analyzer.get_space_group_number()
        except Exception as err:  # spglib gives up on some inputs
            raise MatcardError(f"spglib failed on structure {offset + i}: {err}") from err
    return numbers


_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


@dataclass(frozen=True)
class ThresholdTask(Task):
    """Binary: rows where ``column <op> value`` holds are the positive class (index 1)."""

    column: str = ""
    op: str = ">"
    value: float = 0.0
    positive: str = "positive"
    negative: str = "negative"

    kind: ClassVar[str] = "threshold"

    def __post_init__(self) -> None:
        if self.op not in _OPERATORS:
            raise ConfigError(
                f"task {self.name!r}: op must be one of {', '.join(_OPERATORS)}, got {self.op!r}"
            )
        if not self.column:
            raise ConfigError(f"task {self.name!r}: column is required")

    @property
    def class_names(self) -> list[str]:
        return [self.negative, self.positive]

    def compute(self, table: pd.DataFrame, structures: StructuresFn | None = None) -> Labels:
        values = self._column(table, self.column).to_numpy(dtype=float)
        return Labels(_OPERATORS[self.op](values, self.value).astype(np.int64), self.class_names)


@dataclass(frozen=True)
class RangeTask(Task):
    """Binary: ``low <= column <= high`` is the positive class (index 1); either bound optional."""

    column: str = ""
    low: float | None = None
    high: float | None = None
    positive: str = "positive"
    negative: str = "negative"

    kind: ClassVar[str] = "range"

    def __post_init__(self) -> None:
        if not self.column:
            raise ConfigError(f"task {self.name!r}: column is required")
        if self.low is None and self.high is None:
            raise ConfigError(f"task {self.name!r}: give low, high or both")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ConfigError(f"task {self.name!r}: low ({self.low}) is above high ({self.high})")

    @property
    def class_names(self) -> list[str]:
        return [self.negative, self.positive]

    def compute(self, table: pd.DataFrame, structures: StructuresFn | None = None) -> Labels:
        values = self._column(table, self.column).to_numpy(dtype=float)
        inside = np.ones(len(values), dtype=bool)
        if self.low is not None:
            inside &= values >= self.low
        if self.high is not None:
            inside &= values <= self.high
        return Labels(inside.astype(np.int64), self.class_names)


@dataclass(frozen=True)
class BinsTask(Task):
    """Ordered classes from inner bin edges: ``[e0, e1]`` gives ``<e0``, ``[e0,e1)``, ``>=e1``."""

    column: str = ""
    edges: tuple[float, ...] = ()
    names: tuple[str, ...] | None = None

    kind: ClassVar[str] = "bins"

    def __post_init__(self) -> None:
        if not self.column:
            raise ConfigError(f"task {self.name!r}: column is required")
        if not self.edges:
            raise ConfigError(f"task {self.name!r}: edges must not be empty")
        if any(b <= a for a, b in itertools.pairwise(self.edges)):
            raise ConfigError(
                f"task {self.name!r}: edges must be strictly increasing, got {list(self.edges)}"
            )
        if self.names is not None and len(self.names) != len(self.edges) + 1:
            raise ConfigError(
                f"task {self.name!r}: names needs {len(self.edges) + 1} entries for {len(self.edges)} edges"
            )
        object.__setattr__(self, "edges", tuple(float(e) for e in self.edges))
        if self.names is not None:
            object.__setattr__(self, "names", tuple(self.names))

    @property
    def class_names(self) -> list[str]:
        if self.names is not None:
            return list(self.names)
        e = [f"{x:g}" for x in self.edges]
        return [f"<{e[0]}", *(f"[{a},{b})" for a, b in itertools.pairwise(e)), f">={e[-1]}"]

    def compute(self, table: pd.DataFrame, structures: StructuresFn | None = None) -> Labels:
        values = self._column(table, self.column).to_numpy(dtype=float)
        return Labels(np.digitize(values, self.edges, right=False).astype(np.int64), self.class_names)


@dataclass(frozen=True)
class CategoricalTask(Task):
    """One class per value of ``column``. ``classes`` fixes the order; ``mapping`` renames values."""

    column: str = ""
    classes: tuple[str, ...] | None = None
    mapping: dict[str, str] = field(default_factory=dict)

    kind: ClassVar[str] = "categorical"

    def __post_init__(self) -> None:
        if not self.column:
            raise ConfigError(f"task {self.name!r}: column is required")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "mapping", {_value_key(k): str(v) for k, v in self.mapping.items()})

    def __hash__(self) -> int:
        return hash((self.name, self.column, self.classes, tuple(sorted(self.mapping.items()))))

    @property
    def class_names(self) -> list[str] | None:
        return list(self.classes) if self.classes is not None else None

    def compute(self, table: pd.DataFrame, structures: StructuresFn | None = None) -> Labels:
        raw = self._column(table, self.column).tolist()
        values = [self.mapping.get(_value_key(v), _value_key(v)) for v in raw]
        names = list(self.classes) if self.classes is not None else sorted(set(values), key=_natural_key)
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted({v for v in values if v not in index})
        if unknown:
            raise MatcardError(
                f"task {self.name!r}: values {unknown[:5]} of column {self.column!r} "
                f"are not among the classes {names}"
            )
        return Labels(np.array([index[v] for v in values], dtype=np.int64), names)


def _value_key(value: Any) -> str:
    """A stable string for a label value: 1, 1.0 and "1" are the same class."""
    if isinstance(value, float | np.floating) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def _natural_key(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


TASK_KINDS: dict[str, type[Task]] = {
    cls.kind: cls for cls in (CrystalSystemTask, ThresholdTask, RangeTask, BinsTask, CategoricalTask)
}


def task_from_dict(data: dict[str, Any]) -> Task:
    """Rebuild a task from ``Task.to_dict()``."""
    data = dict(data)
    kind = data.pop("kind", None)
    cls = TASK_KINDS.get(str(kind))
    if cls is None:
        raise ConfigError(f"unknown task kind {kind!r}; expected one of {', '.join(TASK_KINDS)}")
    for key in ("edges", "names", "classes"):
        if isinstance(data.get(key), list):
            data[key] = tuple(data[key])
    try:
        return cls(**data)
    except TypeError as err:
        raise ConfigError(f"invalid fields for task kind {kind!r}: {err}") from err


_RANGE = re.compile(r"^\s*(?P<low>[-+0-9.eE]+)\s*<=\s*(?P<col>[^<>=!]+?)\s*<=\s*(?P<high>[-+0-9.eE]+)\s*$")
_THRESHOLD = re.compile(r"^\s*(?P<col>[^<>=!]+?)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<value>[-+0-9.eE]+)\s*$")


def parse_task(spec: str, known: dict[str, Task] | None = None) -> Task:
    """A Task from a name in ``known`` or a compact spelling (see module docstring)."""
    spec = spec.strip()
    if known and spec in known:
        return known[spec]
    head, _, rest = spec.partition(":")
    try:
        if head == "crystal_system":
            options = dict(part.split("=", 1) for part in rest.split(",") if part) if rest else {}
            allowed = {"symprec", "angle_tolerance", "column"}
            if set(options) - allowed:
                raise UsageError(f"crystal_system options are {', '.join(sorted(allowed))}")
            return CrystalSystemTask(
                spacegroup_column=options.get("column"),
                symprec=float(options.get("symprec", 0.01)),
                angle_tolerance=float(options.get("angle_tolerance", 5.0)),
            )
        if head == "bins":
            column, _, edges = rest.rpartition(":")
            return BinsTask(name=spec, column=column, edges=tuple(float(e) for e in edges.split(",")))
        if head == "categorical":
            return CategoricalTask(name=spec, column=rest)
        if match := _RANGE.match(spec):
            return RangeTask(
                name=spec, column=match["col"], low=float(match["low"]), high=float(match["high"])
            )
        if match := _THRESHOLD.match(spec):
            return ThresholdTask(name=spec, column=match["col"], op=match["op"], value=float(match["value"]))
    except (ValueError, ConfigError) as err:
        raise UsageError(f"invalid task {spec!r}: {err}") from err
    names = f"; known tasks: {', '.join(known)}" if known else ""
    raise UsageError(
        f"unknown task {spec!r}{names}. Generic forms: crystal_system[:symprec=0.01], COLUMN>=VALUE, "
        "LOW<=COLUMN<=HIGH, bins:COLUMN:E1,E2, categorical:COLUMN"
    )


__all__ = [
    "CRYSTAL_SYSTEMS",
    "BinsTask",
    "CategoricalTask",
    "CrystalSystemTask",
    "Labels",
    "RangeTask",
    "Task",
    "ThresholdTask",
    "crystal_system",
    "crystal_system_index",
    "parse_task",
    "task_from_dict",
]
