"""Shard planning and the crash-safe, append-only shard store behind resumable screening.

Layout of a screen's state directory (``<out stem>.parts/`` beside the output file)::

    manifest.json                  settings fingerprint + one entry per *committed* shard
    inputs.json                    the input files with size and mtime (see screening.fingerprint)
    shard-000007.parquet           predictions of shard 7 (written to a temp file, then renamed)
    shard-000007.errors.parquet    failures of shard 7 (only when there were any)

A shard counts as finished only once ``manifest.json`` (rewritten atomically) lists it. After a
``kill -9`` at any moment, reopening with ``resume=True`` deletes every file the manifest does not
reference (half-written temp files, parts renamed just before the kill) and reports the keys of
every committed item, so the caller skips exactly those and redoes the rest: each input ends up
in exactly one committed row.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from matcard.errors import ConfigError, UsageError
from matcard.fileio import atomic_path, atomic_write_json
from matcard.screening.fingerprint import ListingRow, check_unchanged, save_listing

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 2  # 2: error parts carry a detail column; fingerprint holds content hashes
LISTING_NAME = "inputs.json"
_OURS = ("shard-", ".shard-", f".{MANIFEST_NAME}.", LISTING_NAME, f".{LISTING_NAME}.")  # files we write

ERROR_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("id", pa.string()),
        ("source", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)


def item_key(id_: str, source: str) -> int:
    """A 64-bit key for one input item (id + source), so the resume set stays small in memory."""
    digest = hashlib.blake2b(f"{id_}\x1f{source}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def prediction_schema(class_names: Iterable[str], with_sets: bool = False) -> pa.Schema:
    """Columns of a shard part: ``seq`` (stream position, dropped on merge) + the public columns."""
    fields = [
        ("seq", pa.int64()),
        ("id", pa.string()),
        ("source", pa.string()),
        ("predicted_class", pa.string()),
        ("argmax_class", pa.string()),
    ]
    fields += [(f"prob_{name}", pa.float64()) for name in class_names]
    fields += [("max_prob", pa.float64())]
    fields += [("prediction_set", pa.string())] if with_sets else []
    fields += [("flags", pa.string())]
    return pa.schema(fields)


# --------------------------------------------------------------------------- planning


@dataclass
class ShardPlanner:
    """Groups a stream of items into shards of roughly equal *atom* count.

    Work per structure (neighbour search, message passing) scales with its number of atoms, so
    balancing atoms rather than structure counts keeps workers equally busy when a few huge cells
    sit among many small ones. A structure larger than the budget gets a shard of its own.
    """

    target_atoms: int
    max_items: int | None = None
    _items: list[Any] = field(default_factory=list)
    _atoms: int = 0

    def __post_init__(self) -> None:
        if self.target_atoms < 1:
            raise UsageError(f"shard atom budget must be >= 1, got {self.target_atoms}")

    def add(self, item: Any, n_atoms: int) -> list[Any] | None:
        """Add one item; return the finished shard when this item fills it, else None."""
        self._items.append(item)
        self._atoms += max(int(n_atoms), 1)
        full = self._atoms >= self.target_atoms
        if self.max_items is not None and len(self._items) >= self.max_items:
            full = True
        return self.flush() if full else None

    def flush(self) -> list[Any] | None:
        """Return the partly filled shard (None when empty) and start a new one."""
        if not self._items:
            return None
        shard, self._items, self._atoms = self._items, [], 0
        return shard

    @property
    def pending(self) -> int:
        return len(self._items)


def plan_shards(sizes: Iterable[int], target_atoms: int) -> list[list[int]]:
    """Indices of items grouped into atom-balanced shards, in input order (planner, non-streaming)."""
    planner = ShardPlanner(target_atoms)
    shards: list[list[int]] = []
    for index, n_atoms in enumerate(sizes):
        shard = planner.add(index, n_atoms)
        if shard is not None:
            shards.append(shard)
    tail = planner.flush()
    if tail is not None:
        shards.append(tail)
    return shards


# --------------------------------------------------------------------------- store


@dataclass
class ShardEntry:
    index: int
    rows: int
    errors: int
    min_seq: int
    results_file: str | None
    errors_file: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "rows": self.rows,
            "errors": self.errors,
            "min_seq": self.min_seq,
            "results_file": self.results_file,
            "errors_file": self.errors_file,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardEntry:
        return cls(
            index=int(data["index"]),
            rows=int(data["rows"]),
            errors=int(data["errors"]),
            min_seq=int(data["min_seq"]),
            results_file=data.get("results_file"),
            errors_file=data.get("errors_file"),
        )


class ShardStore:
    """Append-only shard parts + an atomically rewritten manifest; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        fingerprint: dict[str, Any],
        schema: pa.Schema,
        listing: list[ListingRow] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.schema = schema
        self.listing = listing or []  # input files, kept so a refused resume can name the changes
        self.shards: dict[int, ShardEntry] = {}

    # -- opening -------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST_NAME

    def open(self, *, resume: bool, overwrite: bool) -> None:
        """Start fresh, or (resume) reload committed shards and drop every uncommitted file."""
        manifest = self._read_manifest()
        if manifest is not None and not resume:
            if not overwrite and manifest.get("shards"):  # an empty state has nothing to lose
                raise UsageError(
                    f"an unfinished screen with {len(manifest.get('shards', []))} finished shard(s) "
                    f"exists in {self.directory}; pass --resume to continue it or --overwrite to start again"
                )
            manifest = None
        if manifest is None:
            self._clear()
            self.directory.mkdir(parents=True, exist_ok=True)
            self.shards = {}
            save_listing(self.directory / LISTING_NAME, self.listing)
            self._write_manifest()
            return
        self._check_fingerprint(manifest.get("fingerprint", {}))
        self.shards = {int(s["index"]): ShardEntry.from_json(s) for s in manifest.get("shards", [])}
        for entry in self.shards.values():  # a committed part that vanished is a corrupt state
            for name in (entry.results_file, entry.errors_file):
                if name is not None and not (self.directory / name).is_file():
                    raise UsageError(
                        f"screen state in {self.directory} is damaged ({name} is missing); "
                        "rerun with --overwrite to start again"
                    )
        referenced = {MANIFEST_NAME, LISTING_NAME}
        for entry in self.shards.values():
            referenced.update(n for n in (entry.results_file, entry.errors_file) if n is not None)
        for path in self.directory.iterdir():
            # temp files, and parts renamed just before a kill but never recorded in the manifest
            if path.is_file() and path.name not in referenced and path.name.startswith(_OURS):
                path.unlink()

    def _read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.is_file():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:  # atomic writes make this very unlikely
            raise UsageError(
                f"cannot read screen manifest {self.manifest_path}: {exc}; rerun with --overwrite"
            ) from exc
        if manifest.get("format") != MANIFEST_FORMAT:
            raise UsageError(f"unsupported screen manifest format in {self.manifest_path}; use --overwrite")
        return manifest

    def _check_fingerprint(self, previous: dict[str, Any]) -> None:
        change = check_unchanged(previous, self.fingerprint, self.directory / LISTING_NAME, self.listing)
        if change is not None:
            raise ConfigError(
                f"--resume: {change}; refusing to mix results (state in {self.directory}); "
                "rerun with --overwrite to start again"
            )

    def _clear(self) -> None:
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            if path.is_file() and (path.name == MANIFEST_NAME or path.name.startswith(_OURS)):
                path.unlink()

    def remove(self) -> None:
        """Delete the state directory (after a successful merge)."""
        self._clear()
        with contextlib.suppress(OSError):  # the user put something else there; leave it
            self.directory.rmdir()

    # -- state ---------------------------------------------------------------------------
    @property
    def next_index(self) -> int:
        return max(self.shards, default=-1) + 1

    def finished_keys(self) -> set[int]:
        """Keys (see item_key) of every committed prediction and failure."""
        keys: set[int] = set()
        for table in self._iter_parts(("id", "source"), errors=False):
            keys.update(
                item_key(i, s)
                for i, s in zip(table["id"].to_pylist(), table["source"].to_pylist(), strict=True)
            )
        for table in self._iter_parts(("id", "source"), errors=True):
            keys.update(
                item_key(i, s)
                for i, s in zip(table["id"].to_pylist(), table["source"].to_pylist(), strict=True)
            )
        return keys

    @property
    def committed_items(self) -> int:
        return sum(e.rows + e.errors for e in self.shards.values())

    # -- commit --------------------------------------------------------------------------
    def commit(self, index: int, results: pa.Table, errors: pa.Table) -> ShardEntry:
        """Write shard ``index`` atomically and record it in the manifest (the commit point)."""
        if index in self.shards:
            raise RuntimeError(f"shard {index} is already committed")
        results = results.cast(self.schema)
        errors = errors.cast(ERROR_SCHEMA)
        results_file = errors_file = None
        if results.num_rows:
            results_file = f"shard-{index:06d}.parquet"
            self._write_part(results, results_file)
        if errors.num_rows:
            errors_file = f"shard-{index:06d}.errors.parquet"
            self._write_part(errors, errors_file)
        seqs = [*results["seq"].to_pylist(), *errors["seq"].to_pylist()]
        entry = ShardEntry(
            index=index,
            rows=results.num_rows,
            errors=errors.num_rows,
            min_seq=min(seqs) if seqs else 0,
            results_file=results_file,
            errors_file=errors_file,
        )
        self.shards[index] = entry
        self._write_manifest()
        return entry

    def _write_part(self, table: pa.Table, name: str) -> None:
        target = self.directory / name
        with atomic_path(target) as tmp:
            pq.write_table(table, tmp)

    def _write_manifest(self) -> None:
        atomic_write_json(
            self.manifest_path,
            {
                "format": MANIFEST_FORMAT,
                "fingerprint": self.fingerprint,
                "shards": [self.shards[i].to_json() for i in sorted(self.shards)],
            },
            indent=1,
        )

    # -- reading -------------------------------------------------------------------------
    def ordered_entries(self) -> list[ShardEntry]:
        """Committed shards in input order (by their first stream position)."""
        return sorted(self.shards.values(), key=lambda e: (e.min_seq, e.index))

    def _iter_parts(self, columns: tuple[str, ...] | None, *, errors: bool) -> Iterator[pa.Table]:
        for entry in self.ordered_entries():
            name = entry.errors_file if errors else entry.results_file
            if name is not None:
                yield pq.read_table(self.directory / name, columns=list(columns) if columns else None)

    def iter_results(self, columns: tuple[str, ...] | None = None) -> Iterator[pa.Table]:
        """Each committed results part, sorted by stream position, in input order."""
        for table in self._iter_parts(columns, errors=False):
            yield table.sort_by("seq") if "seq" in table.column_names else table

    def iter_errors(self) -> Iterator[pa.Table]:
        for table in self._iter_parts(None, errors=True):
            yield table.sort_by("seq")
