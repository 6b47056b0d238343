"""Cache locations and the parsed-dataset Parquet cache.

Cache root: ``MATCARD_DATA_DIR`` if set, else ``data/`` in a source checkout, else the platform
user-cache directory. Raw downloads live at ``<root>/<folder>/<file>`` (the mirror layout);
parsed datasets at ``<root>/parsed/<name>-<key>.parquet``.

Parsed structures are stored compactly, one row per structure: ``lattice`` (9 floats),
``species`` (list of symbols; a disordered site is a JSON occupancy dict), ``frac_coords``
(3 floats per site), ``flags``. Loading reads these as flat Arrow buffers, and pymatgen
``Structure`` objects are built only when asked for (:class:`StructureStore`).

Each Parquet file has a manifest beside it (``<name>-<key>.parquet.json``: sha256 and size of the
Parquet bytes), written after the Parquet file. On open the bytes are hashed once and parsed from the
same buffer; a missing manifest or a mismatch means the cache is rebuilt (with a one-line notice),
because Parquet itself has no checksum that catches a flipped byte inside a value.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matcard.fileio import atomic_path, atomic_write_json, sha256_file

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import pyarrow as pa
    from pymatgen.core import Structure

CACHE_VERSION = "3"  # 3: checksummed by a manifest beside the Parquet file
_STRUCTURE_COLUMNS = ("lattice", "species", "frac_coords", "flags")
_REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """The dataset cache root (created if missing)."""
    env = os.environ.get("MATCARD_DATA_DIR")
    if env:
        root = Path(env).expanduser()
    elif (_REPO_ROOT / "pyproject.toml").is_file() and (_REPO_ROOT / "matcard").is_dir():
        root = _REPO_ROOT / "data"
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("matcard"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def parsed_cache_path(root: Path, name: str, key: str) -> Path:
    return root / "parsed" / f"{name}-{key[:16]}.parquet"


def cache_key(*parts: object) -> str:
    digest = hashlib.sha256(CACHE_VERSION.encode())
    for part in parts:
        digest.update(b"\0" + str(part).encode())
    return digest.hexdigest()


class StructureStore:
    """Structures held as flat arrays; ``Structure`` objects are built lazily and memoised."""

    def __init__(
        self,
        lattices: np.ndarray,
        species: Sequence[str],
        frac_coords: np.ndarray,
        offsets: np.ndarray,
        flags: Sequence[tuple[str, ...]] | None = None,
    ) -> None:
        self.lattices = np.asarray(lattices, dtype=np.float64).reshape(-1, 3, 3)
        self.species = species
        self.frac_coords = np.asarray(frac_coords, dtype=np.float64).reshape(-1, 3)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.flags = list(flags) if flags is not None else [() for _ in range(len(self.lattices))]
        self._built: list[Structure] | None = None

    def __len__(self) -> int:
        return len(self.lattices)

    @classmethod
    def from_structures(
        cls, structures: Sequence[Structure], flags: Sequence[tuple[str, ...]] | None = None
    ) -> StructureStore:
        lattices = np.array([s.lattice.matrix for s in structures], dtype=np.float64).reshape(-1, 3, 3)
        species: list[str] = []
        coords: list[np.ndarray] = []
        offsets = [0]
        for structure in structures:
            for site in structure:
                if site.is_ordered:
                    species.append(str(site.specie))
                else:
                    species.append(json.dumps({str(k): v for k, v in site.species.items()}))
            coords.append(structure.frac_coords)
            offsets.append(offsets[-1] + len(structure))
        frac = np.concatenate(coords) if coords else np.zeros((0, 3))
        store = cls(lattices, species, frac, np.asarray(offsets), flags)
        store._built = list(structures)
        return store

    def structure(self, index: int) -> Structure:
        from pymatgen.core import Lattice, Structure

        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        species = [json.loads(s) if s.startswith("{") else s for s in self.species[start:stop]]
        return Structure(Lattice(self.lattices[index]), species, self.frac_coords[start:stop])

    def structures(self) -> list[Structure]:
        if self._built is None:
            self._built = [self.structure(i) for i in range(len(self))]
        return self._built

    def compositions(self) -> list[Any]:
        """Compositions straight from the species lists (no Structure objects built)."""
        from collections import Counter

        from pymatgen.core import Composition

        out = []
        for index in range(len(self)):
            start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
            amounts: Counter[str] = Counter()
            for species in self.species[start:stop]:
                if species.startswith("{"):
                    for element, occupancy in json.loads(species).items():
                        amounts[element] += occupancy
                else:
                    amounts[species] += 1
            out.append(Composition(dict(amounts)))
        return out

    def n_sites(self) -> np.ndarray:
        return np.diff(self.offsets)

    def subset(self, indices: Sequence[int] | np.ndarray) -> StructureStore:
        idx = np.asarray(indices, dtype=np.int64)
        counts = self.n_sites()[idx]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        site_index = (
            np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx])
            if len(idx)
            else np.zeros(0, dtype=np.int64)
        )
        store = StructureStore(
            self.lattices[idx],
            [self.species[j] for j in site_index],
            self.frac_coords[site_index],
            offsets,
            [self.flags[i] for i in idx],
        )
        if self._built is not None:
            store._built = [self._built[i] for i in idx]
        return store

    def content_hash(self, ids: Sequence[str]) -> str:
        digest = hashlib.sha256()
        digest.update("\n".join(map(str, ids)).encode())
        digest.update(np.ascontiguousarray(self.lattices).round(8).tobytes())
        digest.update(np.ascontiguousarray(self.frac_coords).round(8).tobytes())
        digest.update("\n".join(self.species).encode())
        digest.update(self.offsets.tobytes())
        return digest.hexdigest()

    def to_arrow_columns(self) -> dict[str, pa.Array]:
        import pyarrow as pa

        n = len(self)
        counts = self.n_sites()
        return {
            "lattice": pa.FixedSizeListArray.from_arrays(pa.array(self.lattices.reshape(-1)), 9),
            "species": pa.ListArray.from_arrays(
                pa.array(self.offsets, pa.int32()), pa.array(self.species, pa.string())
            ),
            "frac_coords": pa.ListArray.from_arrays(
                pa.array(self.offsets * 3, pa.int32()), pa.array(self.frac_coords.reshape(-1))
            ),
            "flags": pa.array([list(f) for f in self.flags], pa.list_(pa.string()))
            if n
            else pa.array([], pa.list_(pa.string())),
            "n_sites": pa.array(counts, pa.int32()),
        }

    @classmethod
    def from_arrow(cls, table: pa.Table) -> StructureStore:
        lattice = table.column("lattice").combine_chunks()
        species = table.column("species").combine_chunks()
        coords = table.column("frac_coords").combine_chunks()
        offsets = np.asarray(species.offsets)
        offsets = offsets - offsets[0]
        flags = [tuple(f) for f in table.column("flags").to_pylist()]
        return cls(
            np.asarray(lattice.flatten()),
            species.flatten().to_pylist(),
            np.asarray(coords.flatten()),
            offsets,
            flags,
        )


def write_parsed(
    path: Path,
    table: pd.DataFrame,
    store: StructureStore | None,
    metadata: dict[str, Any],
) -> None:
    """Write a parsed dataset (table + optional structure columns) atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table.reset_index(drop=True), preserve_index=False)
    if store is not None:
        for name, column in store.to_arrow_columns().items():
            arrow = arrow.append_column(f"__{name}", column)
    meta = dict(arrow.schema.metadata or {})
    meta[b"matcard"] = json.dumps({"cache_version": CACHE_VERSION, **metadata}, default=str).encode()
    arrow = arrow.replace_schema_metadata(meta)
    manifest = manifest_path(path)
    manifest.unlink(missing_ok=True)  # never a manifest vouching for bytes it did not see
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)
        digest, size = sha256_file(tmp), tmp.stat().st_size
    atomic_write_json(manifest, {"cache_version": CACHE_VERSION, "sha256": digest, "bytes": size})


def manifest_path(path: Path) -> Path:
    """The checksum manifest of a parsed-dataset Parquet file."""
    return path.with_name(path.name + ".json")


def _verified_bytes(path: Path) -> tuple[bytes | None, str]:
    """(the file's bytes, "") when they match the manifest, else (None, why not)."""
    try:
        manifest = json.loads(manifest_path(path).read_text())
        expected, size = str(manifest["sha256"]), int(manifest["bytes"])
    except FileNotFoundError:
        return None, "it has no checksum manifest"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return None, f"its manifest is unreadable ({error})"
    try:
        data = path.read_bytes()
    except OSError as error:
        return None, f"unreadable: {error}"
    if len(data) != size:
        return None, f"size {len(data)} != {size} bytes in its manifest"
    if hashlib.sha256(data).hexdigest() != expected:
        return None, "sha256 mismatch"
    return data, ""


def _rebuild_notice(path: Path, reason: str) -> None:
    from matcard.console import console

    console.print(
        f"parsed-dataset cache {path} is corrupt ({reason}); rebuilding it",
        markup=False,
        soft_wrap=True,
        highlight=False,
    )


def read_parsed(path: Path) -> tuple[pd.DataFrame, StructureStore | None, dict[str, Any]] | None:
    """Read a parsed dataset, or None when missing / from another cache version / corrupt.

    The bytes are checked against the manifest's sha256 before they are parsed; a corrupt cache
    prints one line on stderr and returns None, so the caller parses the source again."""
    if not path.is_file():
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    data, reason = _verified_bytes(path)
    if data is None:
        _rebuild_notice(path, reason)
        return None
    try:
        arrow = pq.read_table(pa.BufferReader(data))
        meta = json.loads((arrow.schema.metadata or {}).get(b"matcard", b"{}"))
    except Exception as error:  # a damaged cache is rebuilt, never trusted
        _rebuild_notice(path, f"unreadable: {error}")
        return None
    if meta.get("cache_version") != CACHE_VERSION:
        return None
    structure_columns = [f"__{c}" for c in (*_STRUCTURE_COLUMNS, "n_sites")]
    store = None
    if "__lattice" in arrow.column_names:
        store = StructureStore.from_arrow(
            arrow.select([c for c in structure_columns if c in arrow.column_names]).rename_columns(
                [c[2:] for c in structure_columns if c in arrow.column_names]
            )
        )
    table = arrow.drop_columns([c for c in structure_columns if c in arrow.column_names]).to_pandas()
    return table, store, meta


__all__ = [
    "StructureStore",
    "cache_key",
    "data_dir",
    "manifest_path",
    "parsed_cache_path",
    "read_parsed",
    "write_parsed",
]
