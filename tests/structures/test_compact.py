"""Records carry structures as flat arrays across the worker pipe and rebuild the identical Structure."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from matcard.structures import iter_structures, read_structures
from matcard.structures.compact import CompactStructure, as_structure
from matcard.structures.fastcif import _rows_from_parameters, parse_cif_compact, parse_cif_fast
from matcard.structures.records import CompactRecord, StructureRecord, structure_arrays_of


def _mp20_texts(shared_data: Path, n: int) -> list[str]:
    return list(pd.read_csv(shared_data / "mp20_biternary" / "val.csv.gz", nrows=n)["cif"])


def _identical(a: object, b: object) -> None:
    """Same lattice, coordinates, species and labels, float for float, in site order."""
    assert np.array_equal(a.lattice.matrix, b.lattice.matrix)  # type: ignore[attr-defined]
    assert np.array_equal(a.frac_coords, b.frac_coords)  # type: ignore[attr-defined]
    assert [s.species for s in a] == [s.species for s in b]  # type: ignore[attr-defined]
    assert [s.label for s in a] == [s.label for s in b]  # type: ignore[attr-defined]
    assert a == b


def test_lattice_matrix_is_pymatgens_float_for_float() -> None:
    from pymatgen.core import Lattice

    rng = np.random.default_rng(0)
    for _ in range(2000):
        lengths = rng.uniform(2.0, 20.0, 3)
        angles = [90.0, 90.0, 120.0] if rng.random() < 0.3 else list(rng.uniform(40.0, 140.0, 3))
        ours = np.array(_rows_from_parameters(*map(float, lengths), tuple(map(float, angles))))
        assert np.array_equal(ours, Lattice.from_parameters(*lengths, *angles).matrix)


def test_round_trip_and_volume_are_exact(shared_data: Path) -> None:
    from pymatgen.io.cif import CifParser

    for text in _mp20_texts(shared_data, 40):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = CifParser.from_str(text).parse_structures(primitive=False)[0]
        compact = CompactStructure.from_structure(structure)
        assert compact is not None
        _identical(compact.to_structure(), structure)
        assert compact.volume == structure.volume
        assert len(compact) == len(structure) and compact.is_ordered
        assert compact.symbols == [site.specie.symbol for site in structure]
        fast = parse_cif_compact(text)
        assert fast is not None
        _identical(fast[0].to_structure(), parse_cif_fast(text)[0])  # type: ignore[index]


def test_structures_it_cannot_rebuild_exactly_are_refused() -> None:
    from pymatgen.core import Lattice, Structure

    lattice = Lattice.cubic(4.0)
    assert CompactStructure.from_structure(Structure(lattice, ["Fe"], [[0, 0, 0]])) is not None
    refused = {
        "disorder": Structure(lattice, [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]]),
        "oxidation state": Structure(lattice, ["Fe2+"], [[0, 0, 0]]),
        "site property": Structure(lattice, ["Fe"], [[0, 0, 0]], site_properties={"magmom": [2.0]}),
        "structure property": Structure(lattice, ["Fe"], [[0, 0, 0]], properties={"energy": 1.0}),
        "charge": Structure(lattice, ["Fe"], [[0, 0, 0]], charge=1.0),
        "2D": Structure(Lattice(lattice.matrix, pbc=(True, True, False)), ["Fe"], [[0, 0, 0]]),
        "empty": Structure(lattice, [], []),
    }
    for name, structure in refused.items():
        assert CompactStructure.from_structure(structure) is None, name
    assert as_structure(refused["charge"]) is refused["charge"]


def test_compact_record_builds_lazily_and_pickles_only_the_arrays(shared_data: Path) -> None:
    compact, _ = parse_cif_compact(_mp20_texts(shared_data, 1)[0])  # type: ignore[misc]
    record = CompactRecord(id="a", source="s", structure=compact, flags=("f",))
    assert isinstance(record, StructureRecord)
    assert structure_arrays_of(record) is compact
    built = record.structure
    assert record.structure is built and structure_arrays_of(record) is None  # built once, then used
    wire = pickle.dumps(record)
    assert b"pymatgen" not in wire  # the arrays travel, not the built Structure
    again = pickle.loads(wire)
    assert again.__dict__["_structure"] is None and structure_arrays_of(again) is not None
    for name in ("lattice", "frac_coords", "numbers"):  # equal, same dtype, writable like the originals
        sent, received = getattr(compact, name), getattr(again.compact, name)
        assert received.dtype == sent.dtype and received.flags.writeable
        np.testing.assert_array_equal(received, sent)
    assert again.compact.labels == compact.labels
    _identical(again.structure, built)
    record.structure = built.copy()  # a new structure replaces the arrays
    assert record.compact is None and structure_arrays_of(record) is None


@pytest.mark.parametrize("parser", ["fast", "pymatgen"])
def test_pool_hands_back_arrays_with_the_same_records_and_failures(
    shared_data: Path, tmp_path: Path, parser: str
) -> None:
    table = tmp_path / "head.csv"
    pd.read_csv(shared_data / "mp20_biternary" / "val.csv.gz", nrows=30).to_csv(table, index=False)
    sources = [table, shared_data / "messy_cifs"]
    pooled = list(iter_structures(*sources, workers=2, cif_parser=parser))
    inline = read_structures(*sources, workers=0, cif_parser=parser)
    records = [o for o in pooled if isinstance(o, StructureRecord)]
    failures = [o for o in pooled if not isinstance(o, StructureRecord)]
    assert sum(isinstance(r, CompactRecord) for r in records) >= 30  # the mp20 rows at least
    assert [(r.id, r.source, r.flags, r.warnings) for r in records] == [
        (r.id, r.source, r.flags, r.warnings) for r in inline.records
    ]
    assert [(f.source, f.reason) for f in failures] == [(f.source, f.reason) for f in inline.failures]
    for ours, reference in zip(records, inline.records, strict=True):
        _identical(ours.structure, reference.structure)


def test_thickness_guard_matches_the_reciprocal_lattice() -> None:
    from matcard.structures.fastcif import _thicker_than

    rng = np.random.default_rng(1)
    for _ in range(500):
        matrix = rng.normal(size=(3, 3)) * rng.uniform(0.001, 10.0)
        spacings = 1.0 / np.linalg.norm(np.linalg.inv(matrix), axis=0)
        for limit in (0.5 * spacings.min(), 2.0 * spacings.min()):
            assert _thicker_than(matrix.tolist(), limit) == bool(np.all(spacings > limit))
    flat = [[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 0.005]]
    assert not _thicker_than(flat, 0.011)
    assert not _thicker_than([[float("nan"), 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]], 0.011)
    assert not _thicker_than([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 4.0]], 0.011)  # collinear rows
