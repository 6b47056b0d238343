"""What a screen's resume must match: the model's content and the input files as they were.

The fingerprint stored in the shard manifest holds the model's content hash (settings + weights,
not its path), the featurizer, classes, disorder policy, a description of each input and the
sha256 of the *input listing*: every file the inputs expand to, with its size and modification
time. The listing itself is kept beside the manifest, so a refused resume can say which files were
added, removed or modified, with a few example paths.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ListingRow = tuple[str, int, int]  # (absolute path, size in bytes, mtime in ns)
EXAMPLES = 3  # example paths named per kind of change


def model_identity(model: Any) -> str:
    """The model's content hash (TrainedModel.content_hash); a duck-typed model falls back to its type."""
    content = getattr(model, "content_hash", None)
    return str(content) if content else f"object:{type(model).__name__}"


def is_record(obj: Any) -> bool:
    return hasattr(obj, "structure") and hasattr(obj, "id") and hasattr(obj, "source")


def is_structure_object(obj: Any) -> bool:
    """pymatgen Structure / IStructure and ASE Atoms, which the structure reader accepts as they are."""
    return type(obj).__module__.startswith(("pymatgen.", "ase.")) and type(obj).__name__ in {
        "Structure",
        "IStructure",
        "Atoms",
    }


def describe_source(source: Any) -> str:
    if isinstance(source, str):
        return str(Path(source).expanduser().resolve()) if Path(source).expanduser().exists() else source
    if is_record(source):
        return f"record:{source.id}:{source.source}"
    if is_structure_object(source):
        return f"<{type(source).__name__} {len(source)} sites>"
    return f"dataset:{source.name}:{getattr(source, 'content_hash', '')}"


def list_input_files(
    sources: Iterable[Any], exclude: Iterable[Path] = (), unstamped: Iterable[Path] = ()
) -> list[ListingRow]:
    """Every file the path inputs expand to (as the structure reader walks them), sorted.

    ``exclude``: this screen's own outputs and state (never inputs). ``unstamped``: files this
    screen writes into itself (an ASE database that is also an input): listed without size/mtime.
    """
    excluded = [p.resolve() for p in exclude]
    no_stamp = {p.resolve() for p in unstamped}
    rows: dict[str, ListingRow] = {}
    for source in sources:
        if not isinstance(source, str):
            continue
        for path in _expand(source):
            resolved = path.resolve()
            if any(resolved == e or e in resolved.parents for e in excluded):
                continue
            if resolved in no_stamp:
                rows[str(resolved)] = (str(resolved), -1, -1)
                continue
            stat = resolved.stat()
            rows[str(resolved)] = (str(resolved), stat.st_size, stat.st_mtime_ns)
    return [rows[key] for key in sorted(rows)]


def is_own_file(source: str, own: tuple[Path, ...]) -> bool:
    """Whether a reader source (``path`` or ``path#row=..``) is one of ``own`` files or inside one."""
    if not any(path.stem in source for path in own):  # cheap test first: most sources are not
        return False
    return _file_is_own(source.split("#", 1)[0], own)


@functools.lru_cache(maxsize=1024)
def _file_is_own(file: str, own: tuple[Path, ...]) -> bool:
    """Once per file, not per row: the rows of one table share it (resolve() stats every part)."""
    resolved = Path(file).expanduser().resolve()
    return any(resolved == path or path in resolved.parents for path in own)


def _expand(source: str) -> Iterator[Path]:
    path = Path(source).expanduser()
    if path.is_file():
        yield path
    elif path.is_dir():
        yield from _walk(path)
    elif glob.has_magic(source):
        for match in sorted(glob.glob(str(path), recursive=True)):
            match_path = Path(match)
            yield from _walk(match_path) if match_path.is_dir() else (match_path,)


def _walk(directory: Path) -> Iterator[Path]:
    """Non-hidden files, recursively: what matcard's structure reader looks at in a folder."""
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _walk(entry)
        elif entry.is_file():
            yield entry


def listing_digest(listing: list[ListingRow]) -> str:
    return hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()


def fingerprint(
    model: Any, sources: list[Any], class_names: list[str], disorder: str, listing: list[ListingRow]
) -> dict[str, Any]:
    featurizer_config = getattr(getattr(model, "featurizer", None), "config", None)
    dumped = (
        featurizer_config.model_dump(mode="json")
        if hasattr(featurizer_config, "model_dump")
        else repr(featurizer_config)
    )
    return {
        "model": model_identity(model),
        "class_names": class_names,
        "featurizer": dumped,
        "inputs": [describe_source(s) for s in sources],
        "input_files": listing_digest(listing),
        "disorder": disorder,
    }


def describe_listing_change(old: list[ListingRow], new: list[ListingRow]) -> str:
    """'2 added (e.g. a.cif, b.cif), 1 removed (e.g. c.cif), 1 modified (e.g. d.cif)'."""
    before = {row[0]: tuple(row[1:]) for row in old}
    after = {row[0]: tuple(row[1:]) for row in new}
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    modified = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    parts = []
    for label, paths in (("added", added), ("removed", removed), ("modified", modified)):
        if paths:
            examples = ", ".join(paths[:EXAMPLES]) + (", ..." if len(paths) > EXAMPLES else "")
            parts.append(f"{len(paths)} file(s) {label} (e.g. {examples})")
    return "; ".join(parts) or "the input files changed"


def save_listing(path: Path, listing: list[ListingRow]) -> None:
    from matcard.fileio import atomic_write_text

    atomic_write_text(path, json.dumps([list(row) for row in listing], separators=(",", ":")))


def load_listing(path: Path) -> list[ListingRow] | None:
    try:
        return [(str(p), int(s), int(m)) for p, s, m in json.loads(path.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        return None


def check_unchanged(
    previous: dict[str, Any], current: dict[str, Any], listing_file: Path, listing: list[ListingRow]
) -> str | None:
    """None when a resume may continue; otherwise a sentence naming what changed."""
    for key, value in current.items():
        if previous.get(key) == value:
            continue
        if key == "model":
            return (
                "the model's content differs from the interrupted screen's (its weights or bundle.json "
                "changed, even if the path is the same)"
            )
        if key == "input_files":
            old = load_listing(listing_file)
            change = describe_listing_change(old, listing) if old is not None else "the input files changed"
            return f"the inputs changed since the interrupted screen: {change}"
        return f"{key} differs from the interrupted screen (was {previous.get(key)!r}, now {value!r})"
    return None


__all__ = [
    "check_unchanged",
    "describe_listing_change",
    "describe_source",
    "fingerprint",
    "list_input_files",
    "listing_digest",
    "load_listing",
    "model_identity",
    "save_listing",
]
