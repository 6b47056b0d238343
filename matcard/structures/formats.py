"""File-format detection by name and (compressed) text reading."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

CIF_SUFFIXES = {".cif", ".mcif"}
POSCAR_SUFFIXES = {".vasp", ".poscar"}
XYZ_SUFFIXES = {".xyz", ".extxyz"}
JSON_SUFFIXES = {".json"}
DB_SUFFIXES = {".db"}
TABLE_SUFFIXES = {".csv", ".parquet", ".pq"}
COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz"}
LABEL_FILE_NAMES = {"id_prop.csv"}
# Files that belong to known layouts but hold no structure (reported as skipped, not failed).
AUXILIARY_FILE_NAMES = {"atom_init.json"}


# --------------------------------------------------------------------------------------------
# Format detection and text reading
# --------------------------------------------------------------------------------------------
def _base_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """Format name for a file path ("cif", "poscar", "xyz", "json", "db", "table") or None."""
    p = Path(path)
    name = p.name
    for suffix in COMPRESSION_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    upper = name.upper()
    if upper.startswith(("POSCAR", "CONTCAR")):
        return "poscar"
    suffix = _base_suffix(p)
    if suffix in CIF_SUFFIXES:
        return "cif"
    if suffix in POSCAR_SUFFIXES:
        return "poscar"
    if suffix in XYZ_SUFFIXES:
        return "xyz"
    if suffix in JSON_SUFFIXES:
        return "json"
    if suffix in DB_SUFFIXES:
        return "db"
    if suffix in TABLE_SUFFIXES:
        return "table"
    return None


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    name = str(path).lower()
    opener: Callable[..., Any] = open
    if name.endswith(".gz"):
        opener = gzip.open
    elif name.endswith(".bz2"):
        opener = bz2.open
    elif name.endswith(".xz"):
        opener = lzma.open
    with opener(path, "rb") as fh:
        return fh.read()


def _read_text(path: str | os.PathLike[str]) -> tuple[str, tuple[str, ...]]:
    """Decode a file as UTF-8; an invalid byte is replaced and reported as a flag, not an error."""
    raw = _read_bytes(path)
    try:
        return raw.decode("utf-8"), ()
    except UnicodeDecodeError as err:
        return raw.decode("utf-8", errors="replace"), (f"encoding:invalid_utf8 (byte {err.start})",)


def _record_id(path: Path) -> str:
    name = path.name
    for suffix in COMPRESSION_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return Path(name).stem if Path(name).suffix else name
