"""Element-property node features in the spirit of CGCNN, built from pymatgen's element data.

Each element becomes a binned one-hot vector over nine properties (group, period, block,
electronegativity, covalent radius, valence electrons, first ionisation energy, electron
affinity, atomic volume). Every continuous property has an extra "missing" bin, so an element
without data (e.g. the electronegativity of a noble gas) is encoded explicitly instead of
being silently mapped onto bin 0.

The whole table (one row per atomic number 0..118) is built once per process, after which the
node features of a structure are a single fancy-indexing lookup ``table[atomic_numbers]``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_Z = 118

# (name, edges) for continuous properties: values are assigned to len(edges) - 1 bins with
# np.digitize on the interior edges (values outside the range fall into the first / last bin),
# followed by one "missing" bin.
_CONTINUOUS_BINS: dict[str, np.ndarray] = {
    "electronegativity": np.linspace(0.5, 4.0, 11),  # Pauling
    "covalent_radius": np.linspace(0.25, 2.5, 11),  # Å (Cordero et al. 2008)
    "first_ionization_energy": np.geomspace(3.0, 25.0, 11),  # eV, log-spaced as in CGCNN
    "electron_affinity": np.linspace(-3.0, 3.7, 11),  # eV
    "atomic_volume": np.geomspace(1.5, 120.0, 11),  # Å^3 per atom, from the molar volume
}
_GROUPS = 18
_PERIODS = 7
_BLOCKS = ("s", "p", "d", "f")
_VALENCE_MAX = 12

AVOGADRO = 6.02214076e23


@dataclass(frozen=True)
class PropertySegment:
    """Where one property lives in the feature vector: columns [start, stop)."""

    name: str
    start: int
    stop: int


def _segments() -> tuple[PropertySegment, ...]:
    sizes: list[tuple[str, int]] = [
        ("group", _GROUPS + 1),
        ("period", _PERIODS + 1),
        ("block", len(_BLOCKS) + 1),
        ("valence_electrons", _VALENCE_MAX + 1),
    ]
    sizes += [(name, len(edges) - 1 + 1) for name, edges in _CONTINUOUS_BINS.items()]
    segments, start = [], 0
    for name, size in sizes:
        segments.append(PropertySegment(name, start, start + size))
        start += size
    return tuple(segments)


SEGMENTS: tuple[PropertySegment, ...] = _segments()
NODE_DIM: int = SEGMENTS[-1].stop


def _safe_float(getter) -> float:  # type: ignore[no-untyped-def]
    """Read one pymatgen element property; anything missing or malformed becomes NaN."""
    try:
        value = getter()
    except (KeyError, ValueError, TypeError, AttributeError, IndexError):
        return math.nan
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _valence_electrons(element) -> float:  # type: ignore[no-untyped-def]
    """Electrons in the outermost shell plus unfilled (n-1)d and (n-2)f subshells."""
    try:
        shells = element.full_electronic_structure
    except (KeyError, ValueError, AttributeError):
        return math.nan
    n_max = max(n for n, _, _ in shells)
    capacity = {"s": 2, "p": 6, "d": 10, "f": 14}
    count = 0
    for n, orbital, electrons in shells:
        if n == n_max or (orbital in "df" and electrons < capacity[orbital]):
            count += electrons
    return float(count)


def raw_element_properties(z: int) -> dict[str, float | str | None]:
    """The unbinned properties of one element as read from pymatgen (NaN / None where absent)."""
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius
    from pymatgen.core.periodic_table import Element

    element = Element.from_Z(z)
    molar_volume = _safe_float(lambda: element.molar_volume)  # cm^3/mol
    return {
        "symbol": element.symbol,
        "group": _safe_float(lambda: element.group),
        "period": _safe_float(lambda: element.row),
        "block": _safe_block(element),
        "valence_electrons": _valence_electrons(element),
        "electronegativity": _safe_float(lambda: element.X),
        "covalent_radius": float(CovalentRadius.radius.get(element.symbol, math.nan)),
        "first_ionization_energy": _safe_float(lambda: element.ionization_energies[0]),
        "electron_affinity": _safe_float(lambda: element.electron_affinity),
        "atomic_volume": molar_volume * 1e24 / AVOGADRO if math.isfinite(molar_volume) else math.nan,
    }


def _safe_block(element) -> str | None:  # type: ignore[no-untyped-def]
    try:
        return str(element.block)
    except (KeyError, ValueError, AttributeError):
        return None


def _one_hot_integer(value: float, low: int, high: int) -> tuple[int, bool]:
    """Bin index for an integer property in [low, high] (clipped); (index, missing)."""
    if not math.isfinite(value):
        return 0, True
    return int(min(max(round(value), low), high)) - low, False


@functools.lru_cache(maxsize=1)
def element_feature_table() -> np.ndarray:
    """float32 [MAX_Z + 1, NODE_DIM]: row z is the one-hot encoding of element z (row 0 unused)."""
    table = np.zeros((MAX_Z + 1, NODE_DIM), dtype=np.float32)
    seg = {s.name: s for s in SEGMENTS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns about every missing datum
        for z in range(1, MAX_Z + 1):
            props = raw_element_properties(z)
            row = table[z]
            for name, low, high in (
                ("group", 1, _GROUPS),
                ("period", 1, _PERIODS),
                ("valence_electrons", 1, _VALENCE_MAX),
            ):
                index, missing = _one_hot_integer(props[name], low, high)  # type: ignore[arg-type]
                s = seg[name]
                row[s.stop - 1 if missing else s.start + index] = 1.0
            s = seg["block"]
            block = props["block"]
            row[s.start + _BLOCKS.index(block) if block in _BLOCKS else s.stop - 1] = 1.0
            for name, edges in _CONTINUOUS_BINS.items():
                s = seg[name]
                value = float(props[name])  # type: ignore[arg-type]
                if math.isfinite(value):
                    row[s.start + int(np.digitize(value, edges[1:-1]))] = 1.0
                else:
                    row[s.stop - 1] = 1.0
    table.setflags(write=False)
    return table


@functools.lru_cache(maxsize=1)
def element_table_digest() -> str:
    """Short hash of what the feature table is built from (pymatgen's version, whose element data
    it reads, and this module's source): part of every cache key, so new element data never reuses
    graphs built from old data. Cheap: a cache hit never has to build the table itself."""
    from importlib.metadata import version

    digest = hashlib.sha256(version("pymatgen").encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]
