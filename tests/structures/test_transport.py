"""A worker's batch of outcomes arrives as it was sent, array-holding records packed column-wise."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from matcard.structures.fastcif import parse_cif_compact
from matcard.structures.records import CompactRecord, ReadFailure, StructureRecord
from matcard.structures.transport import for_transport, pack_outcomes, unpack_outcomes


def _records(shared_data: Path, n: int) -> list[CompactRecord]:
    texts = pd.read_csv(shared_data / "mp20_biternary" / "val.csv.gz", nrows=n)["cif"]
    records = []
    for i, text in enumerate(texts):
        parsed = parse_cif_compact(text)
        assert parsed is not None
        records.append(
            CompactRecord(
                id=f"mp-{i}",
                source=f"val.csv.gz#row={i}",
                structure=parsed[0],
                label=i % 3,
                flags=("cif_warning:coords_rounded",) if i % 4 == 0 else (),
                warnings=("a message",) if i % 4 == 0 else (),
                properties={"band_gap": 0.5 * i} if i % 2 else {},
            )
        )
    return records


def _round_trip(results: list) -> list:  # type: ignore[type-arg]
    return unpack_outcomes(pickle.loads(pickle.dumps(pack_outcomes(results))))


def _same_record(a: StructureRecord, b: StructureRecord) -> None:
    assert type(a) is type(b)
    for name in ("id", "source", "label", "flags", "warnings", "properties"):
        assert getattr(a, name) == getattr(b, name), name
    if isinstance(a, CompactRecord):
        assert isinstance(b, CompactRecord)
        assert a.compact is not None and b.compact is not None
        for name in ("lattice", "frac_coords", "numbers"):
            x, y = getattr(a.compact, name), getattr(b.compact, name)
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name
            assert x.flags.writeable
        assert a.compact.labels == b.compact.labels
        assert a.features == b.features
    assert a.structure == b.structure


def test_mixed_batch_round_trips_in_order(shared_data: Path) -> None:
    from pymatgen.core import Lattice, Structure

    records = _records(shared_data, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        disordered = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    held = StructureRecord(id="d", source="d.cif", structure=disordered)  # cannot travel as arrays
    built = _records(shared_data, 1)[0]
    assert len(built.structure) > 0  # its Structure is built: it travels pickled, as it is
    with_features = _records(shared_data, 2)[1]
    with_features.features = {"graph": [1, 2, 3]}
    results = [(10 + i, [record]) for i, record in enumerate(records[:20])]
    results += [
        (40, [ReadFailure("bad.cif", "disordered")]),
        (41, [for_transport(held)]),
        (42, [built]),
        (43, [records[20], records[21]]),  # two blocks of one file
        (44, []),
        (45, [with_features]),
    ]
    results += [(50 + i, [record]) for i, record in enumerate(records[22:])]
    back = _round_trip(results)
    assert [index for index, _ in back] == [index for index, _ in results]
    for (_, sent), (_, received) in zip(results, back, strict=True):
        assert len(sent) == len(received)
        for a, b in zip(sent, received, strict=True):
            if isinstance(a, ReadFailure):
                assert a == b
            else:
                _same_record(a, b)


def test_unpacked_records_own_their_arrays(shared_data: Path) -> None:
    records = _records(shared_data, 3)
    back = _round_trip([(i, [record]) for i, record in enumerate(records)])
    first, second = back[0][1][0], back[1][1][0]
    coords, numbers, lattice = (
        second.compact.frac_coords.copy(),
        second.compact.numbers.copy(),
        second.compact.lattice.copy(),
    )
    first.compact.frac_coords[:] = 0.123  # in place, as a caller may: views of one batch array
    first.compact.numbers[:] = 1
    first.compact.lattice[:] = 9.0
    assert np.array_equal(second.compact.frac_coords, coords)
    assert np.array_equal(second.compact.numbers, numbers)
    assert np.array_equal(second.compact.lattice, lattice)


def test_empty_and_unpackable_batches() -> None:
    assert _round_trip([]) == []
    failures = [(0, [ReadFailure("a", "no atomic sites")]), (1, [ReadFailure("b", "disordered")])]
    assert _round_trip(failures) == failures
