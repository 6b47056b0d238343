"""CSV / Parquet tables with a CIF column, read in chunks."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matcard.errors import UsageError
from matcard.structures.cells import cell_content
from matcard.structures.formats import _base_suffix, _record_id
from matcard.structures.reasons import plain_reason
from matcard.structures.records import ReadFailure, _Item

CIF_COLUMN_CANDIDATES = ("cif", "cif_string", "cif_str", "structure_cif", "structure")
ID_COLUMN_CANDIDATES = ("material_id", "id", "mp_id", "mpid", "cif_id", "name", "jid")


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


TABLE_CHUNK_ROWS = 4096
SNIFF_ROWS = 20  # rows read to choose the structure column
# Named columns whose content is looked at first, in this order (then any other column).
STRUCTURE_NAME_HINTS = ("cif", "structure", "poscar")


def _is_parquet(path: Path) -> bool:
    return _base_suffix(path) in {".parquet", ".pq"}


def _opener(path: Path) -> Any:
    """``open``, or the decompressing open for a .gz / .bz2 / .xz name."""
    suffix = Path(str(path).lower()).suffix
    return {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(suffix, open)


def _open_text(path: Path) -> Any:
    return _opener(path)(path, "rt", encoding="utf-8", errors="replace", newline="")


def comment_lines(path: Path) -> int:
    """Leading ``#`` lines (matminer's ``# ref: ...``) before a CSV header: rows for ``skiprows``."""
    count = 0
    with _open_text(path) as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            count += 1
    return count


def _csv_options(path: Path) -> dict[str, Any]:
    return {"skiprows": comment_lines(path)}


def _read_table(path: Path, nrows: int | None = None) -> Any:
    """A whole CSV / Parquet table (or its first ``nrows`` rows), leading comment lines skipped."""
    import pandas as pd

    if _is_parquet(path):
        if nrows is not None:
            return next(_table_chunks(path, nrows), pd.DataFrame())
        return pd.read_parquet(path)
    return pd.read_csv(path, nrows=nrows, **_csv_options(path))


def _table_chunks(path: Path, chunk_rows: int | None = None) -> Iterator[Any]:
    """A CSV / Parquet table as pandas chunks, so that huge tables stream."""
    import pandas as pd

    rows = chunk_rows or TABLE_CHUNK_ROWS
    if _is_parquet(path):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
            yield batch.to_pandas()
        return
    with pd.read_csv(path, chunksize=rows, **_csv_options(path)) as reader:
        yield from reader


def _column_chunks(path: Path, columns: list[str], structure: str) -> Iterator[tuple[list[Any], Any]]:
    """A table in chunks as (the structure column's cells, a DataFrame of every other column).

    A CSV is split by pyarrow when it can (about a tenth of pandas' time on a column of CIF text),
    and the other columns are then read by pandas from their own text, so their values and types
    are exactly what ``pandas.read_csv`` gives; anything pyarrow cannot split the way pandas would
    (rows of the wrong width, whitespace-only lines, invalid UTF-8...) is read by pandas from the
    first row pyarrow did not deliver.
    """
    delivered = 0
    if not _is_parquet(path):
        chunks = _arrow_csv_chunks(path, columns, structure)
        while True:
            try:
                cells, others = next(chunks)
            except StopIteration:
                return
            except Exception:  # pandas decides, from here on
                break
            delivered += len(cells)
            yield cells, others
    for chunk in _table_chunks(path):
        chunk.columns = columns
        if delivered >= len(chunk):
            delivered -= len(chunk)
            continue
        chunk = chunk.iloc[delivered:]
        delivered = 0
        yield chunk[structure].tolist(), chunk.drop(columns=[structure])


_ARROW_BLOCK_BYTES = 1 << 20
# Cells pandas.read_csv reads as missing by default (its documented na_values): the structure
# column's cells say "empty" for these whichever reader split the file.
_PANDAS_NA = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A"}
    | {"NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)


def _arrow_csv_chunks(path: Path, columns: list[str], structure: str) -> Iterator[tuple[list[Any], Any]]:
    """:func:`_column_chunks` for a CSV by pyarrow, in pandas' chunks (``TABLE_CHUNK_ROWS`` rows, so
    that a column of mixed values gets the type pandas would give it chunk by chunk)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    width, rows = len(columns), TABLE_CHUNK_ROWS
    with _opener(path)(path, "rb") as source:
        reader = pacsv.open_csv(
            source,
            # positional names and every value as its text: the header row is pandas' (columns)
            read_options=pacsv.ReadOptions(
                skip_rows=comment_lines(path),
                autogenerate_column_names=True,
                skip_rows_after_names=1,
                use_threads=False,
                block_size=_ARROW_BLOCK_BYTES,
            ),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={f"f{i}": pa.string() for i in range(width)},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        pending: list[Any] = []
        count = 0
        for batch in reader:
            if batch.num_columns != width:
                raise ValueError("column count differs from the header")
            pending.append(batch)
            count += batch.num_rows
            while count >= rows:
                table = pa.Table.from_batches(pending)
                yield _split_chunk(table.slice(0, rows), columns, structure)
                pending, count = table.slice(rows).to_batches(), count - rows
        if count:
            yield _split_chunk(pa.Table.from_batches(pending), columns, structure)


def _split_chunk(table: Any, columns: list[str], structure: str) -> tuple[list[Any], Any]:
    """The structure column's cells, and the other columns read by pandas from their own CSV text."""
    import io

    import pandas as pd
    import pyarrow.csv as pacsv

    at = columns.index(structure)
    text = io.BytesIO()
    pacsv.write_csv(table.remove_column(at), text, write_options=pacsv.WriteOptions(include_header=False))
    others = [name for name in columns if name != structure]
    frame = pd.read_csv(io.BytesIO(text.getvalue()), header=None, names=others)
    if len(frame) != table.num_rows:  # e.g. a row pandas would read as blank
        raise ValueError("row count differs")
    cells = table.column(at).to_pylist()
    return [None if cell in _PANDAS_NA else cell for cell in cells], frame


Entry = tuple[str, Any]  # ("item", _Item) | ("outcome", Outcome) | ("skipped", ReadFailure)


@dataclass(frozen=True)
class StructureColumn:
    name: str
    kind: str  # _Item kind per row: "cif_text" (plain CIF column) | "cell" | "cell_poscar" (sniffed per row)


def _candidate_order(columns: Sequence[str]) -> list[str]:
    """Exact known names first, then names containing a hint, then every other column."""
    lowered = {c.lower(): c for c in columns}
    exact = [lowered[c] for c in CIF_COLUMN_CANDIDATES if c in lowered]
    named = [c for hint in STRUCTURE_NAME_HINTS for c in columns if hint in c.lower() and c not in exact]
    rest = [c for c in columns if c not in exact and c not in named]
    return list(dict.fromkeys([*exact, *named, *rest]))


def _column_kind(column: str, values: list[Any]) -> str | None:
    """How the sample values of a column hold structures, or None when they hold none."""
    poscar = "poscar" in column.lower()
    contents = [cell_content(v, poscar=poscar) for v in values]
    kinds = {c[0] for c in contents if c is not None}
    if not kinds:
        return None
    # CIF text as the cell itself (not nested in a dict): parsed straight away, no per-row sniffing
    pairs = zip(values, contents, strict=True)
    plain_cif = all(c is None or (c[0] == "cif_text" and c[1] is v) for v, c in pairs)
    if plain_cif:
        return "cif_text"
    return "cell_poscar" if poscar else "cell"


def _parses(column: StructureColumn, value: Any) -> bool:
    from matcard.structures.parsers import _parse_item
    from matcard.structures.records import StructureRecord, _Options

    item = _Item(kind=column.kind, source="sniff", text=value if isinstance(value, str) else None, id="sniff")
    if item.text is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return any(isinstance(o, StructureRecord) for o in _parse_item(item, _Options(disorder="keep")))


def find_structure_column(head: Any, explicit: str | None = None) -> tuple[StructureColumn | None, str]:
    """The column of ``head`` (a DataFrame) holding structures, and why none was chosen otherwise.

    Candidates are ranked by name (``cif``, ``structure``, ``poscar``) before content; a candidate must
    hold CIF text, POSCAR text or a Structure dict (JSON / Python repr, possibly nested under a
    ``structure`` key), and when several do, the first whose first value actually parses wins.
    """
    columns = [str(c) for c in head.columns]
    if explicit is not None:
        if explicit not in columns:
            raise UsageError(f"CIF column {explicit!r} not found; columns: {', '.join(columns)}")
        order = [explicit]
    else:
        order = _candidate_order(columns)
    found: list[tuple[StructureColumn, Any]] = []
    for column in order:
        values = [v for v in head[column].tolist() if isinstance(v, str | bytes | dict) and len(v)][:3]
        kind = _column_kind(column, values) if values else None
        if kind is not None:
            found.append((StructureColumn(column, kind), values[0]))
    if explicit is not None:
        return StructureColumn(explicit, found[0][0].kind if found else "cif_text"), ""
    if len(found) > 1:
        parsing = next((col for col, value in found if _parses(col, value)), None)
        return parsing or found[0][0], ""
    if found:
        return found[0][0], ""
    shown = ", ".join(columns[:15]) + (f" (+{len(columns) - 15} more)" if len(columns) > 15 else "")
    why = (
        f"no CIF column in table: no column named like cif / structure / poscar, and none holds "
        f"CIF text or pymatgen Structure dicts in its first rows; columns seen: {shown}"
    )
    return None, why


def _table_entries(
    path: Path,
    *,
    cif_column: str | None,
    id_column: str | None,
    label_column: str | None,
    in_directory: bool,
) -> Iterator[Entry]:
    row_number = 0
    try:
        head = _read_table(path, nrows=SNIFF_ROWS)  # columns from the head: the body stays streamed
        column, why = find_structure_column(head, cif_column)
        if column is None:
            yield ("skipped" if in_directory else "outcome", ReadFailure(str(path), why))
            return
        columns = [str(c) for c in head.columns]
        id_col = _find_column(columns, ID_COLUMN_CANDIDATES, id_column, "id")
        label_col = _find_column(columns, (), label_column, "label") if label_column else None
        skip = {column.name, id_col, label_col}
        other = [c for c in columns if c not in skip and not c.startswith("Unnamed:")]
        for texts, chunk in _column_chunks(path, columns, column.name):
            # Column lists, not row dicts: Python scalars in one pass per column (a row dict and a
            # numpy-scalar conversion per cell cost more than parsing a small CIF on the fast path).
            ids = chunk[id_col].tolist() if id_col is not None else None
            labels = _plain_column(chunk[label_col]) if label_col else None
            extras = [_plain_column(chunk[c]) for c in other]
            for offset, text in enumerate(texts):
                row_id = str(ids[offset]) if ids is not None else f"{_record_id(path)}:{row_number}"
                source = f"{path}#row={row_number}"
                row_number += 1
                if not isinstance(text, str) or not text.strip():
                    yield ("outcome", ReadFailure(source, f"empty structure cell (column {column.name!r})"))
                    continue
                item = _Item(
                    kind=column.kind,
                    source=source,
                    text=text,
                    id=row_id,
                    label=labels[offset] if labels is not None else None,
                    properties=tuple(zip(other, [values[offset] for values in extras], strict=True)),
                )
                yield ("item", item)
    except UsageError:
        raise
    except Exception as err:
        where = f"{path}#row={row_number}" if row_number else str(path)
        reason, detail = plain_reason(err)
        yield ("outcome", ReadFailure(where, f"unreadable table: {reason}", detail))


def _plain_column(series: Any) -> list[Any]:
    """A column's values as Python scalars (``tolist`` converts numeric columns wholesale)."""
    values = series.tolist()
    return [_plain(v) for v in values] if series.dtype == object else values


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (records must pickle cheaply and serialise to JSON)."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        with contextlib.suppress(Exception):
            return value.item()
    return value
