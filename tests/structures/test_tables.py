"""Tables as the field publishes them: matminer CSVs (comment line, repr dicts, multi-line fields)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli import app
from matcard.structures import read_structures

runner = CliRunner()
UNTOKENIZABLE = "id,cif\n1,x\n2,x,y,z\n"  # line 3 has more fields than the header


@pytest.fixture(scope="module")
def published(shared_data: Path) -> Path:
    return shared_data / "matminer_published"


def test_dielectric_reads_the_cif_inside_the_meta_repr_dict(published: Path) -> None:
    result = read_structures(published / "dielectric_constant_2017_head.csv", workers=1)
    assert not result.failures and len(result.records) == 12
    first = result.records[0]
    assert first.structure.composition.reduced_formula == "Rb2Te"  # meta's formula u'Rb2Te'
    assert first.properties["band_gap"] == 1.88  # the header is the line after '# ref: ...'
    assert "meta" not in first.properties


def test_piezoelectric_multiline_structure_and_poscar_fields(published: Path) -> None:
    result = read_structures(published / "piezoelectric_tensor_2017_head.csv", workers=1)
    assert not result.failures and len(result.records) == 12
    assert result.records[0].id == "mp-22925" and result.records[0].properties["space_group"] == 216
    assert result.records[0].structure.composition.reduced_formula == "AgI"


def test_comment_line_is_skipped_and_missing_column_names_the_columns(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("# ref: Someone et al.\nband_gap,formula_weight\n1.0,2.0\n")
    failure = read_structures(tmp_path / "t.csv").failures[0]
    assert "columns seen: band_gap, formula_weight" in failure.reason and "# ref" not in failure.reason


def test_structure_dict_json_column_and_a_candidate_that_does_not_parse(
    shared_data: Path, tmp_path: Path
) -> None:
    records = read_structures(shared_data / "cgcnn_sample_classification", workers=1).records[:4]
    broken = "data_x\n_cell_length_a 1\nloop_\n_atom_site_fract_x\n_atom_site_label\n q Q\n"
    table = pd.DataFrame(
        {
            "cif": [broken] * 4,  # named like the CIF column, but it does not parse
            "structure_json": [json.dumps(r.structure.as_dict()) for r in records],
            "name": [r.id for r in records],
        }
    )
    table.to_csv(tmp_path / "dicts.csv", index=False)
    result = read_structures(tmp_path / "dicts.csv", workers=1)
    assert [r.id for r in result.records] == [r.id for r in records] and not result.failures
    assert [r.structure for r in result.records] == [r.structure for r in records]


def test_untokenizable_csv_is_a_failure_with_a_plain_reason(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text(UNTOKENIZABLE)
    failure = read_structures(tmp_path / "bad.csv", workers=0).failures[0]
    assert failure.source == str(tmp_path / "bad.csv")
    assert failure.reason.startswith("unreadable table: malformed table: line 3 has 4 fields")
    assert failure.detail.startswith("ParserError: ")


@pytest.mark.parametrize("command", [["inspect", "--workers", "0"], ["featurize", "--jobs", "1"]])
def test_untokenizable_csv_through_the_cli_exits_1_naming_file_and_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # a short relative name: the table does not fold it
    Path("bad.csv").write_text(UNTOKENIZABLE)
    args = [command[0], "bad.csv", *command[1:]]
    if command[0] == "featurize":
        args += ["--out", "f"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, no ParserError traceback
    shown = re.sub(r"[\s\u2500-\u257f]", "", result.output)
    assert "bad.csv" in shown and "malformedtable:line3has4fields" in shown


def test_table_body_is_streamed_not_read_whole(published: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matcard.datasets import load_dataset

    calls: list[dict] = []
    original = pd.read_csv

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(pd, "read_csv", recording)
    dataset = load_dataset(published / "piezoelectric_tensor_2017_head.csv", workers=1, progress=False)
    assert len(dataset.ids) == 12
    assert calls and all(k.get("nrows") or k.get("chunksize") for k in calls), calls


def _entries(path: Path, *, pandas_only: bool, monkeypatch: pytest.MonkeyPatch) -> list[tuple]:  # type: ignore[type-arg]
    """Every entry the table reader makes of ``path``, as plain comparable tuples."""
    import math

    import matcard.structures.tables as tables

    def refuse(*args: object) -> object:
        raise ValueError("pandas only")
        yield

    with monkeypatch.context() as patch:
        if pandas_only:
            patch.setattr(tables, "_arrow_csv_chunks", refuse)
        entries = list(
            tables._table_entries(
                path, cif_column=None, id_column=None, label_column=None, in_directory=False
            )
        )

    def plain(value: object) -> object:  # NaN == NaN for the comparison
        return "<nan>" if isinstance(value, float) and math.isnan(value) else value

    rows = []
    for kind, payload in entries:
        if kind == "item":
            fields = (payload.kind, payload.source, payload.text, payload.id, plain(payload.label))
            rows.append((kind, *fields, tuple((k, plain(v), type(v)) for k, v in payload.properties)))
        else:
            rows.append((kind, payload.source, payload.reason))
    return rows


def test_csv_split_by_pyarrow_gives_pandas_entries_for_every_shared_table(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Texts, ids, labels and every other column (values and Python types) as pandas reads them."""
    paths = sorted(p for p in shared_data.rglob("*.csv*") if p.suffix in {".csv", ".gz"})
    assert len(paths) >= 10
    checked = 0
    for path in paths:
        fast = _entries(path, pandas_only=False, monkeypatch=monkeypatch)
        assert fast == _entries(path, pandas_only=True, monkeypatch=monkeypatch), path
        checked += sum(kind == "item" for kind, *_ in fast)
    assert checked > 14_000


def test_csv_pyarrow_cannot_split_is_read_by_pandas_from_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_data: Path
) -> None:
    """Quotes, multi-line cells, pandas' missing-value words, and a whitespace-only line well into
    the file (pyarrow refuses it; pandas skips it): pandas takes over after the rows already given."""
    import matcard.structures.tables as tables

    cifs = list(pd.read_csv(shared_data / "mp20_biternary" / "val.csv.gz", nrows=60)["cif"])
    rows = []
    for i, cif in enumerate(cifs):
        note = ["NA", "", 'say "hi"', "multi\nline", "None", "1e3", "007", "True"][i % 8]
        cell = "NA" if i == 7 else ("" if i == 9 else cif)
        rows.append({"material_id": f"m-{i}", "cif": cell, "note": note, "value": i * 0.5})
    table = pd.DataFrame(rows).to_csv(index=False)
    lines = table.split("\n")
    cut = table.index("m-40")
    text = table[:cut] + "   \n" + table[cut:]
    assert len(lines) > 60
    path = tmp_path / "tricky.csv"
    path.write_text(text)
    monkeypatch.setattr(tables, "_ARROW_BLOCK_BYTES", 4096)  # several batches before the bad line
    monkeypatch.setattr(tables, "TABLE_CHUNK_ROWS", 7)  # and several chunks, types inferred per chunk
    fast = _entries(path, pandas_only=False, monkeypatch=monkeypatch)
    assert fast == _entries(path, pandas_only=True, monkeypatch=monkeypatch)
    assert [row[4] for row in fast if row[0] == "item"][:3] == ["m-0", "m-1", "m-2"]
    assert sum(row[0] == "item" for row in fast) == 58 and len(fast) == 60  # two empty cells
