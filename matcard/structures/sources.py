"""Source expansion (parent process): paths, directories, globs, label files, objects."""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from matcard.structures.formats import AUXILIARY_FILE_NAMES, LABEL_FILE_NAMES, _record_id, detect_format
from matcard.structures.reasons import plain_reason
from matcard.structures.records import Outcome, ReadFailure, StructureRecord, _Item
from matcard.structures.tables import Entry, _table_entries


# --------------------------------------------------------------------------------------------
# Source expansion (parent process): paths, directories, globs, tables, databases
# --------------------------------------------------------------------------------------------
def _coerce_label(text: str) -> object:
    text = text.strip()
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return text


def read_label_file(path: str | os.PathLike[str]) -> dict[str, object]:
    """An ``id_prop.csv`` (CGCNN ``id,label`` / ALIGNN ``filename,value``, no header) as a mapping."""
    labels: dict[str, object] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            if len(row) < 2 or not row[0].strip():
                continue
            labels[row[0].strip()] = _coerce_label(row[1])
    return labels


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _file_item(path: Path, label: object | None) -> _Item | None:
    fmt = detect_format(path)
    if fmt in {"cif", "poscar", "xyz", "json", "db"}:
        return _Item(kind=fmt, source=str(path), path=str(path), id=_record_id(path), label=label)
    return None


def _file_entries(
    path: Path,
    label: object | None,
    table_options: dict[str, str | None],
    in_directory: bool,
) -> Iterator[Entry]:
    fmt = detect_format(path)
    if fmt == "table":
        if path.name in LABEL_FILE_NAMES:
            yield ("skipped", ReadFailure(str(path), "label file (id_prop.csv)"))
            return
        yield from _table_entries(path, in_directory=in_directory, **table_options)  # type: ignore[arg-type]
        return
    item = _file_item(path, label)
    if item is not None:
        yield ("item", item)
    elif in_directory:
        reason = (
            "auxiliary file of a known layout"
            if path.name in AUXILIARY_FILE_NAMES
            else f"not a structure file ({path.suffix or path.name})"
        )
        yield ("skipped", ReadFailure(str(path), reason))
    else:
        yield ("outcome", ReadFailure(str(path), f"unsupported file type ({path.suffix or path.name})"))


def _directory_entries(
    directory: Path, table_options: dict[str, str | None], recursive: bool
) -> Iterator[Entry]:
    files = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    labels: dict[str, object] = {}
    label_file = directory / "id_prop.csv"
    if label_file.is_file():
        try:
            labels = read_label_file(label_file)
        except Exception as err:
            yield ("outcome", ReadFailure(str(label_file), f"unreadable label file: {err}"))
    matched: set[str] = set()
    for path in files:
        if path.is_dir():
            if recursive:
                yield from _directory_entries(path, table_options, recursive)
            continue
        key = path.name if path.name in labels else _record_id(path) if _record_id(path) in labels else None
        if key is not None:
            matched.add(key)
        yield from _file_entries(path, labels.get(key) if key else None, table_options, in_directory=True)
    for missing in (k for k in labels if k not in matched):
        yield (
            "outcome",
            ReadFailure(str(directory / missing), "listed in id_prop.csv but no such structure file"),
        )


def _source_entries(
    sources: Sequence[Any], table_options: dict[str, str | None], recursive: bool
) -> Iterator[Entry]:
    """Expand sources lazily, in order, into work entries."""
    for index, source in enumerate(sources):
        if _is_structure_object(source):
            yield ("outcome", _record_from_object(source, index))
            continue
        if isinstance(source, list | tuple):
            yield from _source_entries(source, table_options, recursive)
            continue
        path = Path(os.fspath(source)).expanduser()
        if path.is_dir():
            yield from _directory_entries(path, table_options, recursive)
        elif path.is_file():
            yield from _file_entries(path, None, table_options, in_directory=False)
        elif _is_glob(str(source)):
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                yield ("outcome", ReadFailure(str(source), "glob matched no files"))
            for match in matches:
                match_path = Path(match)
                if match_path.is_dir():
                    yield from _directory_entries(match_path, table_options, recursive)
                else:
                    yield from _file_entries(match_path, None, table_options, in_directory=True)
        else:
            yield ("outcome", ReadFailure(str(source), "no such file or directory"))


def _is_structure_object(obj: Any) -> bool:
    if isinstance(obj, str | os.PathLike | list | tuple):
        return False
    from ase import Atoms
    from pymatgen.core import IStructure

    return isinstance(obj, IStructure | Atoms)


def _record_from_object(obj: Any, index: int) -> Outcome:
    source = f"<{type(obj).__name__} {index}>"
    from ase import Atoms

    if isinstance(obj, Atoms):
        from pymatgen.io.ase import AseAtomsAdaptor

        try:
            obj = AseAtomsAdaptor.get_structure(obj)
        except Exception as err:
            return ReadFailure(source, *plain_reason(err))
    return StructureRecord(id=f"structure-{index}", source=source, structure=obj)
