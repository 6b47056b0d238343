"""An ordered periodic structure as flat arrays: the hand-off form between reader workers and callers.

A pickled pymatgen ``Structure`` costs more to send from a parser process than the fast CIF path
spends parsing it (every site is an object with its own lattice reference and species mapping),
and a screen never needs the objects: the graph featurizer works from the lattice, coordinates and
atomic numbers. :class:`CompactStructure` carries exactly those plus the site labels, builds the
identical ``Structure`` on demand (:meth:`to_structure`), and :meth:`from_structure` accepts only
structures it can rebuild exactly (ordered, plain elements, no site or structure properties, no
charge, periodic in 3D); anything else travels as the Structure it is.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure


@dataclass(frozen=True, eq=False)
class CompactStructure:
    """Lattice rows, fractional coordinates, atomic numbers and labels of an ordered structure."""

    lattice: np.ndarray  # float64 [3, 3], rows are the lattice vectors (Lattice.matrix)
    frac_coords: np.ndarray  # float64 [n, 3], as the Structure stores them (not wrapped)
    numbers: np.ndarray  # int64 [n], atomic numbers in site order
    labels: tuple[str, ...]  # site labels in site order

    def __len__(self) -> int:
        return len(self.numbers)

    # The few Structure attributes the reader's checks and the screening flags read: duck-typed so
    # those checks run unchanged on either form and can never disagree.
    is_ordered = True

    @property
    def volume(self) -> float:
        """Cell volume in Å^3, computed as ``Lattice.volume`` computes it (same float)."""
        # np.cross's elementwise products and differences, written out (np.cross on two 3-vectors
        # costs tens of microseconds of axis handling); np.dot itself is kept, so the float is equal.
        (a0, a1, a2), (b0, b1, b2), c = self.lattice[0].tolist(), self.lattice[1].tolist(), self.lattice[2]
        cross = np.array([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0])
        return float(abs(np.dot(cross, c)))

    @property
    def symbols(self) -> list[str]:
        """Element symbol per site."""
        table = _symbols()
        return [table[z] for z in self.numbers.tolist()]

    @property
    def cart_coords(self) -> np.ndarray:
        """Cartesian coordinates (Å), as ``Structure.cart_coords`` would give them for graphs."""
        return np.ascontiguousarray(self.frac_coords @ self.lattice)

    def to_structure(self) -> Structure:
        """The pymatgen Structure these arrays came from (same lattice, species, coordinates, labels)."""
        from pymatgen.core import Lattice, Structure

        compositions = _compositions()
        return Structure(
            Lattice(self.lattice),
            [compositions[z] for z in self.numbers.tolist()],
            self.frac_coords,
            labels=list(self.labels),
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Two byte strings instead of three pickled arrays: a third of the cost on both ends of the
        # reader's hand-off, which runs once per structure.
        floats = np.concatenate([self.lattice.ravel(), self.frac_coords.ravel()], dtype=np.float64)
        numbers = self.numbers.astype(np.int64, copy=False)
        return (_rebuild, (floats.tobytes(), numbers.tobytes(), self.labels))

    @classmethod
    def from_structure(cls, structure: Any) -> CompactStructure | None:
        """The compact form of ``structure``, or None when :meth:`to_structure` could not rebuild it
        exactly (disorder, oxidation states, dummy species, site or structure properties, charge,
        non-periodic axes, or a Structure subclass)."""
        from pymatgen.core import Element, PeriodicSite, Structure

        if type(structure) is not Structure or len(structure) == 0:
            return None
        if structure.properties or getattr(structure, "_charge", None) is not None:
            return None
        if not all(structure.lattice.pbc):
            return None
        numbers: list[int] = []
        labels: list[str] = []
        for site in structure:
            if type(site) is not PeriodicSite or site.properties:
                return None
            species = site.species
            if len(species) != 1:
                return None
            element, amount = next(iter(species.items()))
            if type(element) is not Element or amount != 1.0:
                return None
            numbers.append(element.Z)
            labels.append(site.label)
        return cls(
            lattice=np.array(structure.lattice.matrix, dtype=np.float64),
            frac_coords=np.array(structure.frac_coords, dtype=np.float64),
            numbers=np.array(numbers, dtype=np.int64),
            labels=tuple(labels),
        )


def _rebuild(floats: bytes, numbers: bytes, labels: tuple[str, ...]) -> CompactStructure:
    """Inverse of ``CompactStructure.__reduce__`` (writable arrays, as the originals were)."""
    return from_flat(
        np.frombuffer(floats, dtype=np.float64).copy(), np.frombuffer(numbers, dtype=np.int64).copy(), labels
    )


def from_flat(floats: np.ndarray, numbers: np.ndarray, labels: tuple[str, ...]) -> CompactStructure:
    """A structure around the flat layout ``__reduce__`` writes (and the reader's batches pack): the
    9 lattice floats, then the fractional coordinates; the arrays are used as given (views stay views)."""
    structure = object.__new__(CompactStructure)  # the dataclass's own state, set as unpickling sets it
    lattice, frac_coords = floats[:9].reshape(3, 3), floats[9:].reshape(-1, 3)
    structure.__dict__.update(lattice=lattice, frac_coords=frac_coords, numbers=numbers, labels=labels)
    return structure


def as_structure(structure: Any) -> Any:
    """A pymatgen Structure for code that needs one: built from a CompactStructure, else as given."""
    return structure.to_structure() if isinstance(structure, CompactStructure) else structure


@lru_cache(maxsize=1)
def _symbols() -> dict[int, str]:
    from pymatgen.core import Element

    return {element.Z: element.symbol for element in Element}


@lru_cache(maxsize=1)
def _compositions() -> dict[int, Any]:
    """One shared Composition per element (what pymatgen gives an ordered site; immutable)."""
    from pymatgen.core import Composition, Element

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {element.Z: Composition({element: 1.0}) for element in Element}
