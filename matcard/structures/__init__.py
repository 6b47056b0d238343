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
    a best-effort SIGALRM limit. A plain structure comes back from a worker as flat arrays in a
    ``CompactRecord`` (a StructureRecord whose ``.structure`` is built on first access, identical
    to the parsed one): unpickling a Structure per record would cost the parent more than parsing.

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

# ruff: noqa: F401  (re-exports: every name the single-module version had keeps importing from here)
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from matcard.errors import UsageError
from matcard.structures.checks import _apply_disorder, _finish
from matcard.structures.cif import (
    _ATOM_SITE_KEYS,
    _BENIGN_WARNING_PATTERNS,
    _DATA_BLOCK,
    _FLAG_PATTERNS,
    _has_atom_sites,
    _parse_cif_text,
    classify_warnings,
)
from matcard.structures.fastcif import CIF_PARSER_ENV, CIF_PARSERS, parse_cif_fast, resolve_cif_parser
from matcard.structures.formats import (
    AUXILIARY_FILE_NAMES,
    CIF_SUFFIXES,
    COMPRESSION_SUFFIXES,
    DB_SUFFIXES,
    JSON_SUFFIXES,
    LABEL_FILE_NAMES,
    POSCAR_SUFFIXES,
    TABLE_SUFFIXES,
    XYZ_SUFFIXES,
    _base_suffix,
    _read_bytes,
    _read_text,
    _record_id,
    detect_format,
)
from matcard.structures.parsers import (
    _json_entries,
    _parse_item,
    _parse_json,
    _parse_poscar_text,
    _parse_xyz,
    _read_ase_db,
    _structure_from_obj,
)
from matcard.structures.pool import (
    _alarm,
    _AlarmTimeout,
    _ordered,
    _run_inline,
    _run_pool,
    _Worker,
    available_cpus,
    parse_items,
)
from matcard.structures.reasons import _error_reason, plain_reason
from matcard.structures.records import (
    DISORDER_POLICIES,
    DisorderPolicy,
    Outcome,
    ReadFailure,
    ReadResult,
    Skipped,
    StructureRecord,
    _Item,
    _Options,
)
from matcard.structures.sources import (
    _coerce_label,
    _directory_entries,
    _file_entries,
    _file_item,
    _is_glob,
    _is_structure_object,
    _record_from_object,
    _source_entries,
    read_label_file,
)
from matcard.structures.tables import (
    CIF_COLUMN_CANDIDATES,
    ID_COLUMN_CANDIDATES,
    TABLE_CHUNK_ROWS,
    Entry,
    _find_column,
    _plain,
    _read_table,
    _table_chunks,
    _table_entries,
)


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
    cif_parser: str | None = None,
    prepare: Callable[[Outcome], Outcome] | None = None,
) -> Iterator[StructureRecord | ReadFailure]:
    """Stream records and failures from ``sources`` in input order (see module docstring).

    ``workers``: parser processes (None: one per available CPU, at most 8; 0: parse in this process,
    with a SIGALRM time limit in the main thread only). ``timeout``: seconds per structure file or
    table row (None: no limit). Non-structure files met in folders are yielded as :class:`Skipped`
    (a ReadFailure subclass) only when ``include_skipped`` is set. Bad options raise at once.
    ``prepare``: a picklable callable run on every outcome in the worker that parsed it, its result
    yielded instead (screening builds graphs there, in parallel); it runs under the same time limit.
    A table row's other columns (``record.properties``) stay in this process and are attached to
    its records here, unless ``prepare`` is set without a false ``reads_properties`` attribute: the
    hook then sees them in the worker.
    """
    if disorder not in DISORDER_POLICIES:
        raise UsageError(f"disorder must be one of {', '.join(DISORDER_POLICIES)}, got {disorder!r}")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"timeout must be positive, got {timeout}")
    if workers is not None and workers < 0:
        raise UsageError(f"workers must be >= 0, got {workers}")
    options = _Options(
        disorder=disorder,
        occupancy_tolerance=occupancy_tolerance,
        cif_parser=resolve_cif_parser(cif_parser),
        prepare=prepare,
    )
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
    cif_parser: str | None = None,
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
        cif_parser=cif_parser,
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
    cif_parser: str | None = None,
) -> list[StructureRecord | ReadFailure]:
    """Parse CIF strings (e.g. a dataset's CIF column), one outcome per string, in order.

    A multi-block string gives its first structural block; the dataset cache relies on 1:1 output.
    """
    ids = list(ids) if ids is not None else [str(i) for i in range(len(texts))]
    items = [
        _Item(kind="cif_text", source=f"{source_prefix}#{item_id}", text=text, id=item_id)
        for text, item_id in zip(texts, ids, strict=True)
    ]
    options = _Options(disorder=disorder, cif_parser=resolve_cif_parser(cif_parser))
    out: list[StructureRecord | ReadFailure] = []
    for _, outcomes in parse_items(
        items, options=options, timeout=timeout, workers=workers, progress=progress, description=description
    ):
        out.append(outcomes[0] if outcomes else ReadFailure("cif", "no structure"))
    return out


__all__ = [
    "CIF_PARSERS",
    "CIF_PARSER_ENV",
    "DISORDER_POLICIES",
    "ReadFailure",
    "ReadResult",
    "Skipped",
    "StructureRecord",
    "available_cpus",
    "classify_warnings",
    "detect_format",
    "iter_structures",
    "parse_cif_fast",
    "parse_cif_strings",
    "plain_reason",
    "read_label_file",
    "read_structures",
    "resolve_cif_parser",
]
