"""CSV / Parquet tables with a CIF column, read in chunks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from matcard.errors import UsageError
from matcard.structures.formats import _base_suffix, _record_id
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
