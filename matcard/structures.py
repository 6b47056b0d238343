"""Read crystal structures from every file format users hand us.

``read_structures(*sources)`` accepts files, directories, globs, in-memory pymatgen ``Structure`` /
ASE ``Atoms`` objects, and returns a :class:`ReadResult`: the structures that were read
(:class:`StructureRecord`) and, for everything else, a :class:`ReadFailure` with a reason.
One bad file never aborts the batch.

Formats
    CIF / mCIF (multi-block files give one record per block with atoms), POSCAR / CONTCAR /
    ``*.vasp``, extxyz / xyz (periodic frames), pymatgen JSON (a Structure dict, a list of them,
    ``{id: dict}``, StructureNL / entry dicts with a ``structure`` key), ASE databases (``.db``, ASE
    ``.json``), CSV / Parquet tables with a CIF column, and folders, including the CGCNN
    (``id_prop.csv`` + ``<id>.cif``) and ALIGNN (``id_prop.csv`` of ``filename,value``) layouts
    whose ``id_prop.csv`` supplies labels. Files may be gzip/bz2/xz compressed.

Time limit
    Parsing runs in a small pool of long-lived worker processes (forked on demand, so a worker
    costs a fork, not an interpreter start) under a watchdog. A structure that takes longer than
    ``timeout`` seconds gets its worker killed and replaced and is reported as
    ``timeout after Ns``; the rest of that worker's batch is re-queued. Workers stream one result
    per structure, so a 14k-row CSV pays no per-structure process cost. Sources are expanded
    lazily (tables in chunks) and results come back in input order through a bounded window.
    Inside a daemonic process (a Pool worker), or with ``workers=0``, parsing runs in-process with
    a best-effort SIGALRM limit.

Data-quality flags
    pymatgen warnings that mean the parsed structure differs from what the file says become
    per-record flags (``cif_warning:sites_dropped``, ``cif_warning:formula_mismatch``,
    ``cif_warning:symbol_reinterpreted``, ``cif_warning:coords_rounded``,
    ``cif_warning:occupancy_rescaled``, ``cif_warning:symmetry_from_hm``,
    ``cif_warning:symmetry_assumed_p1``, ``cif_warning:syntax_issue``,
    ``cif_warning:pauling_file_corrections``, ``cif_warning:other``), an
    undecodable byte gives ``encoding:invalid_utf8``; the raw messages are kept in
    ``StructureRecord.warnings``. A VASP 4 POSCAR without species (pymatgen would invent H, He, ...)
    is a failure.

Disorder policy (``disorder=``)
    ``"skip"`` (default): a structure with partial occupancies is a failure with reason
    ``disordered``. ``"keep"``: kept as is, flagged ``disordered_kept``. ``"majority"``: every
    disordered site becomes its majority species at full occupancy (vacancy-majority sites are
    removed; sites that then sit closer than 0.5 Å are merged), flagged ``majority_species``.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import glob
import gzip
import json
import lzma
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from matcard.console import make_progress
from matcard.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

DisorderPolicy = Literal["skip", "keep", "majority"]
DISORDER_POLICIES: tuple[str, ...] = ("skip", "keep", "majority")

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
CIF_COLUMN_CANDIDATES = ("cif", "cif_string", "cif_str", "structure_cif", "structure")
ID_COLUMN_CANDIDATES = ("material_id", "id", "mp_id", "mpid", "cif_id", "name", "jid")


# --------------------------------------------------------------------------------------------
# Public records
# --------------------------------------------------------------------------------------------
@dataclass
class StructureRecord:
    id: str  # file stem, CIF block name, db row id, CSV id column...
    source: str  # path (and block / row) it came from
    structure: Structure  # pymatgen
    label: object | None = None
    flags: tuple[str, ...] = ()  # e.g. "cif_warning:...", "disordered_kept", "majority_species"
    warnings: tuple[str, ...] = ()  # raw parser warnings behind the flags
    properties: dict[str, Any] = field(default_factory=dict)  # other columns / ASE key-value pairs


@dataclass
class ReadFailure:
    source: str
    reason: str  # "disordered", "timeout after 10s", "parse error: ..."


@dataclass
class ReadResult:
    records: list[StructureRecord]
    failures: list[ReadFailure]
    # Files recognised as not holding structures (label files, notes, tables of metadata).
    skipped: list[ReadFailure] = field(default_factory=list)

    @property
    def structures(self) -> list[Structure]:
        return [record.structure for record in self.records]

    @property
    def ids(self) -> list[str]:
        return [record.id for record in self.records]

    @property
    def labels(self) -> list[object | None]:
        return [record.label for record in self.records]

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class Skipped(ReadFailure):
    """A source that holds no structure by design (label file, notes); not counted as a failure."""


# --------------------------------------------------------------------------------------------
# Work items: what a worker parses. Everything here must be picklable.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Item:
    kind: str  # "cif" | "poscar" | "xyz" | "json" | "cif_text" | "poscar_text" | "structure_dict"
    source: str
    path: str | None = None
    text: str | None = None
    id: str | None = None
    label: object | None = None
    properties: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class _Options:
    disorder: str = "skip"
    occupancy_tolerance: float = 1.0
    site_tolerance: float = 1e-4


Outcome = StructureRecord | ReadFailure


# --------------------------------------------------------------------------------------------
# Warning classification
# --------------------------------------------------------------------------------------------
_BENIGN_WARNING_PATTERNS = (
    re.compile(r"^Issues encountered while parsing CIF"),  # summary repeating the warnings below
    re.compile(r"Keys changed to match new magCIF specification"),
    re.compile(r"Skipping relative stoichiometry check"),
    re.compile(r"Cannot determine chemical composition from CIF"),  # check skipped, data untouched
    re.compile(r"No structure parsed for section"),  # handled per block
    re.compile(r"No Pauling electronegativity"),  # noble gases: formula ordering only
)
_FLAG_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"parsed as\s*$", re.S), "cif_warning:sites_dropped"),
    (re.compile(r"parsed as \S"), "cif_warning:symbol_reinterpreted"),
    (re.compile(r"fractional coordinates rounded"), "cif_warning:coords_rounded"),
    (re.compile(r"Incorrect stoichiometry|Missing elements"), "cif_warning:formula_mismatch"),
    (re.compile(r"occupancies .* sum to > 1", re.S), "cif_warning:occupancy_rescaled"),
    (re.compile(r"Defaulting to P1"), "cif_warning:symmetry_assumed_p1"),
    (re.compile(r"No _symmetry_equiv_pos_as_xyz"), "cif_warning:symmetry_from_hm"),
    (re.compile(r"Possible issue in CIF file at line"), "cif_warning:syntax_issue"),
    (re.compile(r"Pauling file corrections applied"), "cif_warning:pauling_file_corrections"),
)


def classify_warnings(messages: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Map parser warning messages to (flags, kept messages); benign notices are dropped."""
    flags: list[str] = []
    kept: list[str] = []
    for message in messages:
        if any(pattern.search(message) for pattern in _BENIGN_WARNING_PATTERNS):
            continue
        flag = next((name for pattern, name in _FLAG_PATTERNS if pattern.search(message)), None)
        flag = flag or "cif_warning:other"
        if flag not in flags:
            flags.append(flag)
        short = " ".join(message.split())[:200]
        if short not in kept:
            kept.append(short)
    return tuple(flags), tuple(kept)


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


# --------------------------------------------------------------------------------------------
# Disorder handling and validation (run in workers)
# --------------------------------------------------------------------------------------------
def _apply_disorder(structure: Structure, policy: str) -> tuple[Structure | None, tuple[str, ...]]:
    """Return (structure or None when skipped, flags) under the disorder policy."""
    if structure.is_ordered:
        return structure, ()
    if policy == "skip":
        return None, ()
    if policy == "keep":
        return structure, ("disordered_kept",)
    from pymatgen.core import Structure as PmgStructure

    species: list[Any] = []
    coords: list[Any] = []
    properties: dict[str, list[Any]] = {key: [] for key in structure.site_properties}
    for site in structure:
        items = sorted(site.species.items(), key=lambda kv: (-kv[1], str(kv[0])))
        best_species, best_occupancy = items[0]
        vacancy = 1.0 - site.species.num_atoms
        if vacancy > best_occupancy + 1e-8:  # the site is mostly empty
            continue
        species.append(best_species)
        coords.append(site.frac_coords)
        for key in properties:
            properties[key].append(site.properties.get(key))
    if not species:
        return None, ()
    majority = PmgStructure(
        structure.lattice, species, coords, site_properties=properties or None, coords_are_cartesian=False
    )
    if len(majority) > 1:
        majority.merge_sites(tol=0.5, mode="delete")
    return majority, ("majority_species",)


def _finish(
    structure: Structure,
    item_id: str,
    source: str,
    label: object | None,
    options: _Options,
    flags: Sequence[str] = (),
    messages: Sequence[str] = (),
    properties: dict[str, Any] | None = None,
) -> Outcome:
    if len(structure) == 0:
        return ReadFailure(source, "no atomic sites")
    if structure.volume < 1e-3:
        return ReadFailure(source, f"degenerate cell (volume {structure.volume:.3g} Å^3)")
    kept, disorder_flags = _apply_disorder(structure, options.disorder)
    if kept is None:
        return ReadFailure(source, "disordered")
    return StructureRecord(
        id=item_id,
        source=source,
        structure=kept,
        label=label,
        flags=tuple(dict.fromkeys([*flags, *disorder_flags])),
        warnings=tuple(messages),
        properties=properties or {},
    )


def _error_reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, NotImplementedError):
        return f"unsupported: {text[:300]}"
    return f"parse error: {type(err).__name__}: {text[:300]}"


# --------------------------------------------------------------------------------------------
# Per-format parsers (run in workers)
# --------------------------------------------------------------------------------------------
_ATOM_SITE_KEYS = ("_atom_site_fract_x", "_atom_site_cartn_x")
_DATA_BLOCK = re.compile(r"^\s*data_", re.M)


def _has_atom_sites(data: dict[str, Any]) -> bool:
    """A block with at least one real coordinate (exports put '?' placeholders in empty blocks)."""
    for key, values in data.items():
        if key.lower() in _ATOM_SITE_KEYS:
            items = values if isinstance(values, list) else [values]
            if any(str(v).strip() not in {"?", "."} for v in items):
                return True
    return False


def _parse_cif_text(
    text: str,
    item_id: str,
    source: str,
    label: object | None,
    options: _Options,
    extra_flags: tuple[str, ...] = (),
    properties: dict[str, Any] | None = None,
) -> list[Outcome]:
    from pymatgen.io.cif import CifFile, CifParser

    def parse_one(cif_text: str) -> tuple[Structure, tuple[str, ...], tuple[str, ...]]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parser = CifParser.from_str(
                cif_text,
                occupancy_tolerance=options.occupancy_tolerance,
                site_tolerance=options.site_tolerance,
            )
            try:
                structures = parser.parse_structures(primitive=False, on_error="warn")
            except ValueError:  # "Invalid CIF file with no structures!": the reasons are in warnings
                structures = []
        # parser.warnings holds every parsing issue; the caught warnings add the stoichiometry check.
        messages = list(dict.fromkeys([*parser.warnings, *(str(w.message) for w in caught)]))
        if not structures:
            problems = [" ".join(m.split()) for m in messages if not m.startswith("Issues encountered")]
            detail = "; ".join(
                dict.fromkeys(p.replace("No structure parsed for section 1 in CIF. ", "") for p in problems)
            )
            raise ValueError(f"no structure could be built ({detail or 'no usable atom sites'})")
        flags, kept = classify_warnings(messages)
        return structures[0], flags, kept

    encoding_flags = tuple(f.split(" ", 1)[0] for f in extra_flags)
    encoding_messages = tuple(f for f in extra_flags if " " in f)
    if len(_DATA_BLOCK.findall(text)) == 1 and re.search(r"_atom_site_(fract|cartn)_x", text, re.I):
        # Fast path (e.g. a CSV's CIF column): one block with atoms, parsed once.
        try:
            structure, flags, messages = parse_one(text)
        except Exception as err:
            return [ReadFailure(source, _error_reason(err))]
        flags, messages = (*encoding_flags, *flags), (*encoding_messages, *messages)
        return [_finish(structure, item_id, source, label, options, flags, messages, properties)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            blocks = list(CifFile.from_str(text).data.items())
        except Exception as err:
            return [ReadFailure(source, _error_reason(err))]
    structural = [(name, block) for name, block in blocks if _has_atom_sites(block.data)]
    if not structural:
        return [ReadFailure(source, "no atom sites in CIF (no _atom_site_fract_x / _Cartn_x loop)")]
    outcomes: list[Outcome] = []
    multi = len(structural) > 1
    for name, block in structural:
        block_source = f"{source}#{name}" if multi else source
        block_id = f"{item_id}:{name}" if multi else item_id
        try:
            structure, flags, messages = parse_one(str(block) if len(blocks) > 1 else text)
        except Exception as err:
            outcomes.append(ReadFailure(block_source, _error_reason(err)))
            continue
        outcomes.append(
            _finish(
                structure,
                block_id,
                block_source,
                label,
                options,
                (*encoding_flags, *flags),
                (*encoding_messages, *messages),
                properties,
            )
        )
    return outcomes


def _parse_poscar_text(
    text: str,
    item_id: str,
    source: str,
    label: object | None,
    options: _Options,
    properties: dict | None,
    path: str | None = None,
) -> list[Outcome]:
    from pymatgen.io.vasp import Poscar

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if path is not None and (Path(path).parent / "POTCAR").is_file():
            # A VASP 4 POSCAR names no species; pymatgen takes them from the POTCAR beside it.
            structure = Poscar.from_file(path, check_for_potcar=True, read_velocities=False).structure
        else:
            structure = Poscar.from_str(text, read_velocities=False).structure
    messages = tuple(" ".join(str(w.message).split())[:200] for w in caught)
    if any("Elements in POSCAR cannot be determined" in m for m in messages):
        # pymatgen would invent H, He, ... for the species: refuse rather than pass on fake data.
        return [ReadFailure(source, "no species in POSCAR (VASP 4 format without a POTCAR beside it)")]
    flags = ("poscar_warning",) if messages else ()
    return [_finish(structure, item_id, source, label, options, flags, messages, properties)]


def _parse_xyz(
    path: str, item_id: str, source: str, label: object | None, options: _Options
) -> list[Outcome]:
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = ase.io.read(path, index=":", format="extxyz")
    outcomes: list[Outcome] = []
    multi = len(frames) > 1
    for index, atoms in enumerate(frames):
        frame_source = f"{source}#{index}" if multi else source
        frame_id = f"{item_id}:{index}" if multi else item_id
        if not atoms.pbc.any() or atoms.cell.volume < 1e-3:
            outcomes.append(ReadFailure(frame_source, "no periodic cell (xyz frame without Lattice)"))
            continue
        info = {k: v for k, v in atoms.info.items() if isinstance(v, str | int | float | bool)}
        frame_label = info.pop("label", label)
        structure = AseAtomsAdaptor.get_structure(atoms)
        outcomes.append(_finish(structure, frame_id, frame_source, frame_label, options, properties=info))
    if not outcomes:
        outcomes.append(ReadFailure(source, "no frames in xyz file"))
    return outcomes


def _structure_from_obj(obj: Any) -> Structure | None:
    """A Structure from a pymatgen dict (Structure, StructureNL, entry) or None."""
    from pymatgen.core import Structure

    if not isinstance(obj, dict):
        return None
    if "lattice" in obj and "sites" in obj:
        return Structure.from_dict(obj)
    for key in ("structure", "final_structure"):
        inner = obj.get(key)
        if isinstance(inner, dict) and "lattice" in inner and "sites" in inner:
            return Structure.from_dict(inner)
    return None


def _json_entries(data: Any, stem: str) -> list[tuple[str, Any]]:
    """(id, object) pairs in a pymatgen JSON document."""
    if isinstance(data, list):
        pairs = []
        for index, obj in enumerate(data):
            obj_id = None
            if isinstance(obj, dict):
                for key in ("material_id", "id", "task_id", "name"):
                    if isinstance(obj.get(key), str | int):
                        obj_id = str(obj[key])
                        break
            pairs.append((obj_id or f"{stem}:{index}", obj))
        return pairs
    if isinstance(data, dict):
        if _structure_from_obj(data) is not None or "@class" in data:
            return [(stem, data)]
        if data and all(isinstance(v, dict) for v in data.values()):
            return [(str(k), v) for k, v in data.items()]
    return [(stem, data)]


def _parse_json(
    path: str, item_id: str, source: str, label: object | None, options: _Options
) -> list[Outcome]:
    text, encoding_flags = _read_text(path)
    data = json.loads(text)
    if isinstance(data, dict) and "ids" in data and "nextid" in data:  # an ASE JSON database
        return _read_ase_db(path, options)
    pairs = _json_entries(data, item_id)
    multi = len(pairs) > 1
    outcomes: list[Outcome] = []
    for obj_id, obj in pairs:
        entry_source = f"{source}#{obj_id}" if multi else source
        try:
            structure = _structure_from_obj(obj)
        except Exception as err:
            outcomes.append(ReadFailure(entry_source, _error_reason(err)))
            continue
        if structure is None:
            outcomes.append(ReadFailure(entry_source, "not a pymatgen Structure dict"))
            continue
        entry_label = obj.get("label", label) if isinstance(obj, dict) else label
        outcomes.append(_finish(structure, obj_id, entry_source, entry_label, options, encoding_flags))
    return outcomes


def _read_ase_db(path: str, options: _Options) -> list[Outcome]:
    import ase.db
    from pymatgen.io.ase import AseAtomsAdaptor

    outcomes: list[Outcome] = []
    db = ase.db.connect(path)
    with db:
        for row in db.select():
            source = f"{path}#id={row.id}"
            key_values = dict(row.key_value_pairs)
            row_id = str(key_values.get("material_id", key_values.get("name", row.id)))
            try:
                atoms = row.toatoms()
                if not atoms.pbc.any() or atoms.cell.volume < 1e-3:
                    outcomes.append(ReadFailure(source, "no periodic cell (non-periodic row)"))
                    continue
                structure = AseAtomsAdaptor.get_structure(atoms)
            except Exception as err:
                outcomes.append(ReadFailure(source, _error_reason(err)))
                continue
            label = key_values.pop("label", None)
            outcomes.append(_finish(structure, row_id, source, label, options, properties=key_values))
    return outcomes


def _parse_item(item: _Item, options: _Options) -> list[Outcome]:
    """Parse one work item into records / failures; never raises."""
    item_id = item.id or (Path(item.path).stem if item.path else "structure")
    properties = dict(item.properties)
    try:
        if item.kind == "cif":
            assert item.path is not None
            text, encoding = _read_text(item.path)
            return _parse_cif_text(text, item_id, item.source, item.label, options, encoding, properties)
        if item.kind == "cif_text":
            assert item.text is not None
            return _parse_cif_text(item.text, item_id, item.source, item.label, options, (), properties)
        if item.kind == "poscar":
            assert item.path is not None
            text, _ = _read_text(item.path)
            return _parse_poscar_text(text, item_id, item.source, item.label, options, properties, item.path)
        if item.kind == "poscar_text":
            assert item.text is not None
            return _parse_poscar_text(item.text, item_id, item.source, item.label, options, properties)
        if item.kind == "xyz":
            assert item.path is not None
            return _parse_xyz(item.path, item_id, item.source, item.label, options)
        if item.kind == "json":
            assert item.path is not None
            return _parse_json(item.path, item_id, item.source, item.label, options)
        if item.kind == "db":
            assert item.path is not None
            return _read_ase_db(item.path, options)
        if item.kind == "structure_dict":
            assert item.text is not None
            structure = _structure_from_obj(json.loads(item.text))
            if structure is None:
                return [ReadFailure(item.source, "not a pymatgen Structure dict")]
            return [_finish(structure, item_id, item.source, item.label, options, properties=properties)]
        return [ReadFailure(item.source, f"unsupported item kind {item.kind!r}")]
    except Exception as err:  # one bad file never aborts the batch
        return [ReadFailure(item.source, _error_reason(err))]


# --------------------------------------------------------------------------------------------
# Worker pool with a watchdog
# --------------------------------------------------------------------------------------------
def _worker_main(conn: multiprocessing.connection.Connection, options: _Options) -> None:
    """Worker loop: receive batches of (index, item); send one (index, outcomes) per item."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
    warnings.simplefilter("ignore")
    while True:
        try:
            batch = conn.recv()
        except EOFError:
            return
        if batch is None:
            return
        for index, item in batch:
            conn.send((index, _parse_item(item, options)))


def _mp_context() -> multiprocessing.context.BaseContext:
    """Fork where available: a new worker (also the replacement of a killed one) costs a fork, not an
    interpreter start, and scripts without a ``__main__`` guard still work (forkserver and spawn
    re-import the main module). The parser modules are imported first so children inherit them."""
    import pymatgen.io.cif
    import pymatgen.io.vasp  # noqa: F401

    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")  # pragma: no cover - non-POSIX


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class _Worker:
    def __init__(self, ctx: multiprocessing.context.BaseContext, options: _Options) -> None:
        parent_conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child_conn, options), daemon=True)
        self.process.start()
        child_conn.close()
        self.conn = parent_conn
        self.pending: deque[tuple[int, _Item]] = deque()
        self.last_progress = time.monotonic()

    def send(self, batch: list[tuple[int, _Item]]) -> None:
        if not self.pending:  # the clock runs for the item at the head of the queue only
            self.last_progress = time.monotonic()
        self.pending.extend(batch)
        self.conn.send(batch)

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        self.process.join(timeout=5)
        with contextlib.suppress(Exception):
            self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(None)
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.kill()
        with contextlib.suppress(Exception):
            self.conn.close()


def _ordered(
    entries: Iterable[tuple[str, Any]],
    *,
    options: _Options,
    timeout: float | None,
    workers: int | None,
    progress: bool,
    description: str,
    total: int | None = None,
) -> Iterator[tuple[str, Any]]:
    """Run work entries and yield results in input order.

    ``entries``: ("item", _Item) to parse, ("outcome", Outcome) passed through, ("skipped",
    ReadFailure). Yields ("outcomes", list[Outcome]) or ("skipped", ReadFailure), one per entry.
    Entries are pulled lazily (a bounded window ahead of the output), so a huge table streams.
    """
    if workers is None:
        workers = min(available_cpus(), 8)
    if workers > 0 and multiprocessing.current_process().daemon:
        workers = 0  # a daemonic process (e.g. a Pool worker) may not start children: parse here
    with make_progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(description, total=total)
        if workers <= 0:
            for kind, payload in entries:
                yield _run_inline(kind, payload, options, timeout)
                bar.advance(task)
            return
        yield from _run_pool(iter(entries), options, timeout, workers, bar, task)


def _run_inline(kind: str, payload: Any, options: _Options, timeout: float | None) -> tuple[str, Any]:
    if kind == "skipped":
        return ("skipped", payload)
    if kind == "outcome":
        return ("outcomes", [payload])
    try:
        with _alarm(timeout):
            return ("outcomes", _parse_item(payload, options))
    except _AlarmTimeout:
        return ("outcomes", [ReadFailure(payload.source, f"timeout after {timeout:g}s")])


def _run_pool(
    entries: Iterator[tuple[str, Any]],
    options: _Options,
    timeout: float | None,
    workers: int,
    bar: Any,
    task: Any,
) -> Iterator[tuple[str, Any]]:
    """The watchdog pool behind :func:`_ordered` (workers are forked on demand, up to ``workers``)."""
    ctx: multiprocessing.context.BaseContext | None = None
    pool: list[_Worker] = []
    todo: deque[tuple[int, _Item]] = deque()
    ready: dict[int, tuple[str, Any]] = {}
    max_ahead = 64 * workers + 256  # bounds memory: entries pulled but not yet yielded
    next_seq = seq = 0
    exhausted = False

    def replace(worker: _Worker, reason: str) -> None:
        """Kill a worker, fail the item it was on, re-queue the rest of its batch."""
        head_index, head_item = worker.pending.popleft()
        ready[head_index] = ("outcomes", [ReadFailure(head_item.source, reason)])
        todo.extendleft(reversed(worker.pending))
        worker.pending.clear()
        worker.kill()
        pool.remove(worker)

    try:
        while True:
            while not exhausted and seq - next_seq < max_ahead:
                try:
                    kind, payload = next(entries)
                except StopIteration:
                    exhausted = True
                    bar.update(task, total=seq)
                    break
                if kind == "item":
                    todo.append((seq, payload))
                elif kind == "outcome":
                    ready[seq] = ("outcomes", [payload])
                else:
                    ready[seq] = ("skipped", payload)
                seq += 1
            while next_seq in ready:
                yield ready.pop(next_seq)
                next_seq += 1
                bar.advance(task)
            if exhausted and next_seq == seq:
                return
            if not todo and not any(w.pending for w in pool):
                continue  # everything pulled so far was emitted: pull more
            if ctx is None:
                ctx = _mp_context()
            if todo and len(pool) < workers and all(w.pending for w in pool):
                pool.append(_Worker(ctx, options))
            for worker in pool:
                # Small batches keep every worker busy without starving the others at the end; a
                # second batch is queued before the first runs dry so a worker never waits on us.
                size = max(1, min(32, len(todo) // (4 * workers)))
                if todo and len(worker.pending) <= size // 2:
                    worker.send([todo.popleft() for _ in range(min(size, len(todo)))])
            busy = {w.conn: w for w in pool if w.pending}
            wait_for = 0.5 if timeout is None else max(0.01, min(0.5, timeout / 4))
            for conn in multiprocessing.connection.wait(list(busy), timeout=wait_for):
                worker = busy[conn]
                try:
                    index, outcomes = conn.recv()
                except (EOFError, OSError):
                    # The worker died (segfault, OOM kill): blame the item it was on, retry the rest.
                    worker.process.join(timeout=1)
                    replace(worker, f"parser crashed (exit code {worker.process.exitcode})")
                    continue
                expected_index, _ = worker.pending.popleft()
                if expected_index != index:  # pragma: no cover - protocol invariant
                    raise RuntimeError(f"worker returned item {index}, expected {expected_index}")
                worker.last_progress = time.monotonic()
                ready[index] = ("outcomes", outcomes)
            if timeout is not None:
                now = time.monotonic()
                for worker in [w for w in pool if w.pending and now - w.last_progress > timeout]:
                    replace(worker, f"timeout after {timeout:g}s")
    finally:
        for worker in pool:
            if worker.pending:
                worker.kill()
            else:
                worker.stop()


class _AlarmTimeout(BaseException):  # not an Exception: parsers must not swallow it
    pass


@contextlib.contextmanager
def _alarm(timeout: float | None) -> Iterator[None]:
    """Best-effort in-process time limit (main thread only) for workers=0."""
    if timeout is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _AlarmTimeout

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def parse_items(
    items: Sequence[_Item],
    *,
    options: _Options,
    timeout: float | None,
    workers: int | None,
    progress: bool = False,
    description: str = "Reading structures",
) -> Iterator[tuple[int, list[Outcome]]]:
    """Parse work items (pool or inline), yielding (index, outcomes) in input order."""
    results = _ordered(
        (("item", item) for item in items),
        options=options,
        timeout=timeout,
        workers=workers,
        progress=progress,
        description=description,
        total=len(items),
    )
    for index, (_, outcomes) in enumerate(results):
        yield index, outcomes


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


def _find_column(
    columns: Sequence[str], candidates: Sequence[str], explicit: str | None, what: str
) -> str | None:
    if explicit is not None:
        if explicit not in columns:
            raise UsageError(f"{what} column {explicit!r} not found; columns: {', '.join(map(str, columns))}")
        return explicit
    lowered = {str(c).lower(): c for c in columns}
    for candidate in candidates:
        if candidate in lowered:
            return lowered[candidate]
    return None


def _read_table(path: Path) -> Any:
    import pandas as pd

    if _base_suffix(path) in {".parquet", ".pq"}:
        return pd.read_parquet(path)
    return pd.read_csv(path)


TABLE_CHUNK_ROWS = 4096


def _table_chunks(path: Path) -> Iterator[Any]:
    """A CSV / Parquet table as pandas chunks, so that huge tables stream."""
    import pandas as pd

    if _base_suffix(path) in {".parquet", ".pq"}:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=TABLE_CHUNK_ROWS):
            yield batch.to_pandas()
        return
    yield from pd.read_csv(path, chunksize=TABLE_CHUNK_ROWS)


Entry = tuple[str, Any]  # ("item", _Item) | ("outcome", Outcome) | ("skipped", ReadFailure)


def _table_entries(
    path: Path,
    *,
    cif_column: str | None,
    id_column: str | None,
    label_column: str | None,
    in_directory: bool,
) -> Iterator[Entry]:
    row_number = 0
    columns: list[str] = []
    cif_col = id_col = label_col = None
    other: list[str] = []
    try:
        chunks = _table_chunks(path)
        for chunk in chunks:
            if row_number == 0:
                columns = [str(c) for c in chunk.columns]
                cif_col = _find_column(columns, CIF_COLUMN_CANDIDATES, cif_column, "CIF")
                if cif_col is None:  # look for a column whose values are CIF text
                    for column in columns:
                        first = chunk[column].dropna().head(1)
                        if (
                            len(first)
                            and isinstance(first.iloc[0], str)
                            and "_cell_length_a" in first.iloc[0]
                        ):
                            cif_col = column
                            break
                if cif_col is None:
                    reason = f"no CIF column in table (columns: {', '.join(columns[:12])})"
                    yield ("skipped" if in_directory else "outcome", ReadFailure(str(path), reason))
                    return
                id_col = _find_column(columns, ID_COLUMN_CANDIDATES, id_column, "id")
                label_col = _find_column(columns, (), label_column, "label") if label_column else None
                other = [
                    c
                    for c in columns
                    if c not in {cif_col, id_col, label_col} and not c.startswith("Unnamed:")
                ]
            chunk.columns = columns
            for row in chunk.to_dict("records"):
                row_id = str(row[id_col]) if id_col is not None else f"{_record_id(path)}:{row_number}"
                source = f"{path}#row={row_number}"
                row_number += 1
                text = row[cif_col]
                if not isinstance(text, str) or not text.strip():
                    yield ("outcome", ReadFailure(source, "empty CIF cell"))
                    continue
                item = _Item(
                    kind="cif_text",
                    source=source,
                    text=text,
                    id=row_id,
                    label=_plain(row[label_col]) if label_col else None,
                    properties=tuple((c, _plain(row[c])) for c in other),
                )
                yield ("item", item)
    except UsageError:
        raise
    except Exception as err:
        where = f"{path}#row={row_number}" if row_number else str(path)
        yield ("outcome", ReadFailure(where, f"unreadable table: {type(err).__name__}: {err}"))


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (records must pickle cheaply and serialise to JSON)."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        with contextlib.suppress(Exception):
            return value.item()
    return value


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
            return ReadFailure(source, _error_reason(err))
    return StructureRecord(id=f"structure-{index}", source=source, structure=obj)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def iter_structures(
    *sources: Any,
    disorder: DisorderPolicy = "skip",
    timeout: float | None = 10.0,
    workers: int | None = None,
    recursive: bool = True,
    cif_column: str | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
    occupancy_tolerance: float = 1.0,
    progress: bool = False,
    include_skipped: bool = False,
) -> Iterator[StructureRecord | ReadFailure]:
    """Stream records and failures from ``sources`` in input order (see module docstring).

    ``workers``: parser processes (None: one per available CPU, at most 8; 0: parse in this process,
    with a SIGALRM time limit in the main thread only). ``timeout``: seconds per structure file or
    table row (None: no limit). Non-structure files met in folders are yielded as :class:`Skipped`
    (a ReadFailure subclass) only when ``include_skipped`` is set. Bad options raise at once.
    """
    if disorder not in DISORDER_POLICIES:
        raise UsageError(f"disorder must be one of {', '.join(DISORDER_POLICIES)}, got {disorder!r}")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"timeout must be positive, got {timeout}")
    if workers is not None and workers < 0:
        raise UsageError(f"workers must be >= 0, got {workers}")
    options = _Options(disorder=disorder, occupancy_tolerance=occupancy_tolerance)
    table_options = {"cif_column": cif_column, "id_column": id_column, "label_column": label_column}
    entries = _source_entries(sources, table_options, recursive)
    ordered = _ordered(
        entries,
        options=options,
        timeout=timeout,
        workers=workers,
        progress=progress,
        description="Reading structures",
    )
    return _flatten(ordered, include_skipped)


def _flatten(
    ordered: Iterator[tuple[str, Any]], include_skipped: bool
) -> Iterator[StructureRecord | ReadFailure]:
    for kind, payload in ordered:
        if kind == "skipped":
            if include_skipped:
                yield Skipped(payload.source, payload.reason)
        else:
            yield from payload


def read_structures(
    *sources: Any,
    disorder: DisorderPolicy = "skip",
    timeout: float | None = 10.0,
    workers: int | None = None,
    recursive: bool = True,
    cif_column: str | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
    occupancy_tolerance: float = 1.0,
    progress: bool = False,
) -> ReadResult:
    """Read every structure in ``sources`` (files, folders, globs, Structure/Atoms objects).

    Returns records and failures; nothing raises for a bad file. See :func:`iter_structures`.
    """
    records: list[StructureRecord] = []
    failures: list[ReadFailure] = []
    skipped: list[ReadFailure] = []
    for outcome in iter_structures(
        *sources,
        disorder=disorder,
        timeout=timeout,
        workers=workers,
        recursive=recursive,
        cif_column=cif_column,
        id_column=id_column,
        label_column=label_column,
        occupancy_tolerance=occupancy_tolerance,
        progress=progress,
        include_skipped=True,
    ):
        if isinstance(outcome, StructureRecord):
            records.append(outcome)
        elif isinstance(outcome, Skipped):
            skipped.append(outcome)
        else:
            failures.append(outcome)
    return ReadResult(records=records, failures=failures, skipped=skipped)


def parse_cif_strings(
    texts: Sequence[str],
    ids: Sequence[str] | None = None,
    *,
    disorder: DisorderPolicy = "skip",
    timeout: float | None = 10.0,
    workers: int | None = None,
    progress: bool = False,
    description: str = "Parsing CIFs",
    source_prefix: str = "cif",
) -> list[StructureRecord | ReadFailure]:
    """Parse CIF strings (e.g. a dataset's CIF column), one outcome per string, in order.

    A multi-block string gives its first structural block; the dataset cache relies on 1:1 output.
    """
    ids = list(ids) if ids is not None else [str(i) for i in range(len(texts))]
    items = [
        _Item(kind="cif_text", source=f"{source_prefix}#{item_id}", text=text, id=item_id)
        for text, item_id in zip(texts, ids, strict=True)
    ]
    options = _Options(disorder=disorder)
    out: list[StructureRecord | ReadFailure] = []
    for _, outcomes in parse_items(
        items, options=options, timeout=timeout, workers=workers, progress=progress, description=description
    ):
        out.append(outcomes[0] if outcomes else ReadFailure("cif", "no structure"))
    return out


__all__ = [
    "DISORDER_POLICIES",
    "ReadFailure",
    "ReadResult",
    "Skipped",
    "StructureRecord",
    "available_cpus",
    "classify_warnings",
    "detect_format",
    "iter_structures",
    "parse_cif_strings",
    "read_label_file",
    "read_structures",
]
