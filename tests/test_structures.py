"""Structure readers against the real files in ../shared/data (every format, failures, time limit)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

import matcard.structures.parsers as parsers_module
import matcard.structures.tables as tables_module
from matcard.errors import UsageError
from matcard.structures import (
    ReadFailure,
    StructureRecord,
    classify_warnings,
    detect_format,
    iter_structures,
    read_structures,
)


def _file_of(source: str) -> str:
    return Path(source.split("#", 1)[0]).name


@pytest.fixture(scope="module")
def messy(shared_data: Path):
    started = time.monotonic()
    result = read_structures(shared_data / "messy_cifs")
    return result, time.monotonic() - started


@pytest.fixture(scope="module")
def mp20_rows(shared_data: Path) -> pd.DataFrame:
    return pd.read_csv(shared_data / "mp20_biternary" / "val.csv.gz", nrows=25)


# ------------------------------------------------------------------ messy CIFs
def test_messy_cifs_every_file_read_or_listed_with_reason(messy, shared_data: Path) -> None:
    result, elapsed = messy
    assert elapsed < 60
    on_disk = {p.name for p in (shared_data / "messy_cifs").iterdir()}
    accounted = (
        {_file_of(r.source) for r in result.records}
        | {_file_of(f.source) for f in result.failures}
        | {_file_of(s.source) for s in result.skipped}
    )
    assert accounted == on_disk
    assert all(f.reason for f in [*result.failures, *result.skipped])
    assert result.records and result.failures


def test_messy_cifs_known_failures_have_specific_reasons(messy) -> None:
    result, _ = messy
    reasons = {_file_of(f.source): f.reason for f in result.failures}
    assert "thickness" in reasons["bad_superflat_inf_loop.cif"]
    assert "1.556" in reasons["bad_occu.cif"]
    assert reasons["magnetic.incommensurate.example.Cr.mcif"].startswith("unsupported")
    assert reasons["Cu7Te5.cif"] == "disordered"
    assert reasons["srycoo.cif"] == "disordered"
    assert {s.reason for s in result.skipped if _file_of(s.source) == "SOURCES.tsv"}


def test_messy_cifs_altered_data_is_flagged(messy) -> None:
    result, _ = messy
    flags = {r.id: r.flags for r in result.records}
    assert "cif_warning:formula_mismatch" in flags["P24Ru4H252C296S24N16"]
    assert "encoding:invalid_utf8" in flags["bad-unicode-gh-2947"]
    assert "cif_warning:coords_rounded" in flags["cif_finite_precision_frac_coord_error"]
    assert "cif_warning:symmetry_from_hm" in flags["nosymm"]
    clean = flags["Co8"]
    assert clean == ()
    record = next(r for r in result.records if r.id == "P24Ru4H252C296S24N16")
    assert any("stoichiometry" in w for w in record.warnings)


def test_multi_block_cif_gives_one_record_per_block(messy) -> None:
    result, _ = messy
    blocks = [r for r in result.records if r.id.startswith("PF_sd_1704003:")]
    assert len(blocks) == 2
    assert all("#" in r.source for r in blocks)
    assert {r.structure.composition.reduced_formula for r in blocks} == {"Rb2MnF6"}


def test_dropped_sites_are_flagged_when_disorder_kept(shared_data: Path) -> None:
    result = read_structures(shared_data / "messy_cifs" / "PF_sd_1601634.cif", disorder="keep")
    assert result.records
    assert "cif_warning:sites_dropped" in result.records[0].flags
    assert "cif_warning:formula_mismatch" in result.records[0].flags  # the dropped OH hydrogens
    assert "disordered_kept" in result.records[0].flags


def test_superflat_cif_does_not_hang(shared_data: Path) -> None:
    started = time.monotonic()
    result = read_structures(shared_data / "messy_cifs" / "bad_superflat_inf_loop.cif", timeout=5)
    assert time.monotonic() - started < 30
    assert not result.records and len(result.failures) == 1


# ------------------------------------------------------------------ disorder policy
@pytest.mark.parametrize("policy", ["skip", "keep", "majority"])
def test_disorder_policies(shared_data: Path, policy: str) -> None:
    result = read_structures(shared_data / "messy_cifs" / "Cu7Te5.cif", disorder=policy)
    if policy == "skip":
        assert [f.reason for f in result.failures] == ["disordered"]
        return
    (record,) = result.records
    if policy == "keep":
        assert not record.structure.is_ordered
        assert "disordered_kept" in record.flags
    else:
        assert record.structure.is_ordered
        assert "majority_species" in record.flags
        assert {el.symbol for el in record.structure.composition.elements} <= {"Cu", "Te"}
        assert all(site.species.num_atoms == pytest.approx(1.0) for site in record.structure)


def test_unknown_disorder_policy_is_usage_error(shared_data: Path) -> None:
    with pytest.raises(UsageError, match="disorder"):
        read_structures(shared_data / "messy_cifs" / "Co8.cif", disorder="average")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="timeout"):  # raised on the call, before any iteration
        iter_structures(shared_data / "messy_cifs", timeout=0)


# ------------------------------------------------------------------ folder layouts
def test_cgcnn_layout_reads_labels(shared_data: Path) -> None:
    result = read_structures(shared_data / "cgcnn_sample_classification")
    assert len(result.records) == 10 and not result.failures
    labels = [r.label for r in result.records]
    assert sorted(labels) == [0] * 5 + [1] * 5
    ids = {r.id for r in result.records}
    assert ids == {p.stem for p in (shared_data / "cgcnn_sample_classification").glob("*.cif")}
    assert [s.reason for s in result.skipped] == ["label file (id_prop.csv)"]


def test_alignn_layout_reads_70_poscars_with_filename_labels(shared_data: Path) -> None:
    folder = shared_data / "alignn_sample_poscar"
    result = read_structures(folder)
    assert len(result.records) == 70 and not result.failures
    from matcard.structures import read_label_file

    expected = read_label_file(folder / "id_prop.csv")
    got = {r.id + ".vasp": r.label for r in result.records if r.label is not None}
    assert got == expected


def test_id_prop_entry_without_file_is_a_failure(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "cgcnn_sample_classification"
    for cif in list(source.glob("*.cif"))[:2]:
        shutil.copy(cif, tmp_path / cif.name)
    names = [p.stem for p in tmp_path.glob("*.cif")]
    (tmp_path / "id_prop.csv").write_text(f"{names[0]},1\n{names[1]},0\nmissing_one,1\n")
    result = read_structures(tmp_path)
    assert len(result.records) == 2
    failures = [(Path(f.source).name, "id_prop.csv" in f.reason) for f in result.failures]
    assert failures == [("missing_one", True)]


# ------------------------------------------------------------------ single formats
def test_poscar_and_contcar_names(shared_data: Path, tmp_path: Path) -> None:
    poscar = shared_data / "alignn_sample_poscar" / "POSCAR-JVASP-1372.vasp"
    shutil.copy(poscar, tmp_path / "CONTCAR")
    assert detect_format(tmp_path / "CONTCAR") == "poscar"
    a = read_structures(poscar).records[0]
    b = read_structures(tmp_path / "CONTCAR").records[0]
    assert a.id == "POSCAR-JVASP-1372" and b.id == "CONTCAR"
    assert a.structure.composition == b.structure.composition
    assert a.structure.lattice.abc == pytest.approx(b.structure.lattice.abc)


def test_gzipped_cif(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "messy_cifs" / "garnet.cif"
    target = tmp_path / "garnet.cif.gz"
    target.write_bytes(gzip.compress(source.read_bytes()))
    (record,) = read_structures(target).records
    assert record.id == "garnet"
    assert record.structure.composition.reduced_formula == "Ca3Al2(SiO4)3"


def test_extxyz_frames_and_plain_xyz(shared_data: Path, tmp_path: Path) -> None:
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    records = read_structures(shared_data / "cgcnn_sample_classification").records[:3]
    frames = [AseAtomsAdaptor.get_atoms(r.structure) for r in records]
    ase.io.write(tmp_path / "frames.extxyz", frames, format="extxyz")
    result = read_structures(tmp_path / "frames.extxyz")
    assert [r.id for r in result.records] == ["frames:0", "frames:1", "frames:2"]
    for got, want in zip(result.records, records, strict=True):
        assert got.structure.composition == want.structure.composition
        assert got.structure.volume == pytest.approx(want.structure.volume)
    molecule = frames[0].copy()
    molecule.pbc = False
    molecule.cell = [0, 0, 0]
    ase.io.write(tmp_path / "molecule.xyz", molecule, format="xyz")
    result = read_structures(tmp_path / "molecule.xyz")
    assert not result.records and "no periodic cell" in result.failures[0].reason


def test_pymatgen_json_single_list_and_mapping(shared_data: Path, tmp_path: Path) -> None:
    records = read_structures(shared_data / "cgcnn_sample_classification").records[:3]
    (tmp_path / "one.json").write_text(json.dumps(records[0].structure.as_dict()))
    (tmp_path / "many.json").write_text(json.dumps([r.structure.as_dict() for r in records]))
    (tmp_path / "mapping.json").write_text(json.dumps({r.id: r.structure.as_dict() for r in records}))
    (tmp_path / "broken.json").write_text("{not json")
    one = read_structures(tmp_path / "one.json")
    assert [r.id for r in one.records] == ["one"]
    assert one.records[0].structure == records[0].structure
    assert len(read_structures(tmp_path / "many.json").records) == 3
    mapping = read_structures(tmp_path / "mapping.json")
    assert [r.id for r in mapping.records] == [r.id for r in records]
    broken = read_structures(tmp_path / "broken.json")
    assert not broken.records and broken.failures[0].reason == "not valid JSON"
    assert broken.failures[0].detail.startswith("JSONDecodeError: ")


def test_ase_database(shared_data: Path, tmp_path: Path) -> None:
    import ase.db
    from pymatgen.io.ase import AseAtomsAdaptor

    records = read_structures(shared_data / "cgcnn_sample_classification").records
    db_path = tmp_path / "structures.db"
    with ase.db.connect(db_path) as db:
        for record in records:
            atoms = AseAtomsAdaptor.get_atoms(record.structure)
            db.write(atoms, name=f"cod-{record.id}", label=int(record.label))
    result = read_structures(db_path)
    assert [r.id for r in result.records] == [f"cod-{r.id}" for r in records]
    assert [r.label for r in result.records] == [r.label for r in records]
    assert all("#id=" in r.source for r in result.records)


def test_ase_json_database(shared_data: Path, tmp_path: Path) -> None:
    import ase.db
    from pymatgen.io.ase import AseAtomsAdaptor

    records = read_structures(shared_data / "alignn_sample_poscar").records[:4]
    path = tmp_path / "rows.json"
    with ase.db.connect(path) as db:
        for record in records:
            db.write(AseAtomsAdaptor.get_atoms(record.structure), name=f"jv-{record.id}")
    result = read_structures(path)
    assert [r.id for r in result.records] == [f"jv-{r.id}" for r in records]
    for got, want in zip(result.records, records, strict=True):
        assert got.structure.composition == want.structure.composition


def test_csv_and_parquet_with_cif_column(mp20_rows: pd.DataFrame, tmp_path: Path) -> None:
    mp20_rows.to_csv(tmp_path / "rows.csv", index=False)
    mp20_rows.to_parquet(tmp_path / "rows.parquet")
    for name in ("rows.csv", "rows.parquet"):
        result = read_structures(tmp_path / name, label_column="band_gap")
        assert [r.id for r in result.records] == list(mp20_rows["material_id"])
        assert [r.label for r in result.records] == pytest.approx(list(mp20_rows["band_gap"]))
        assert [r.structure.composition.reduced_formula for r in result.records] == list(
            mp20_rows["pretty_formula"]
        )
        assert result.records[0].properties["spacegroup.number"] == mp20_rows["spacegroup.number"][0]


def test_table_without_cif_column_and_unknown_label_column(shared_data: Path) -> None:
    result = read_structures(shared_data / "matbench_composition" / "glass.csv")
    assert not result.records and "no CIF column" in result.failures[0].reason
    with pytest.raises(UsageError, match="label column 'nope'"):
        read_structures(shared_data / "mp20_biternary" / "val.csv.gz", label_column="nope")


def test_globs_missing_paths_and_unsupported_files(shared_data: Path, tmp_path: Path) -> None:
    result = read_structures(str(shared_data / "messy_cifs" / "rhomb_*.cif"))
    assert sorted(r.id for r in result.records) == ["rhomb_3478", "rhomb_3478_conv"]
    assert read_structures(tmp_path / "absent.cif").failures[0].reason == "no such file or directory"
    assert read_structures(str(tmp_path / "*.cif")).failures[0].reason == "glob matched no files"
    (tmp_path / "notes.docx").write_text("hello")
    assert "unsupported file type" in read_structures(tmp_path / "notes.docx").failures[0].reason


def test_in_memory_structures_and_atoms(shared_data: Path) -> None:
    from pymatgen.io.ase import AseAtomsAdaptor

    structure = read_structures(shared_data / "messy_cifs" / "Co8.cif").records[0].structure
    result = read_structures(structure, AseAtomsAdaptor.get_atoms(structure))
    assert len(result.records) == 2
    assert result.records[1].structure.composition == structure.composition


def test_iter_structures_streams_in_input_order(shared_data: Path) -> None:
    folder = shared_data / "messy_cifs"
    outcomes = list(iter_structures(folder / "Co8.cif", folder / "bad_occu.cif", folder / "garnet.cif"))
    # records may come back as CompactRecord (a StructureRecord holding flat arrays) from the workers
    kinds = [StructureRecord if isinstance(o, StructureRecord) else type(o) for o in outcomes]
    assert kinds == [StructureRecord, ReadFailure, StructureRecord]
    assert outcomes[2].structure.composition.reduced_formula  # the lazy Structure builds
    assert [_file_of(o.source) for o in outcomes] == ["Co8.cif", "bad_occu.cif", "garnet.cif"]


def test_warning_classification() -> None:
    flags, kept = classify_warnings(
        ["OH2 parsed as ", "CA parsed as Ca", "Issues encountered while parsing CIF: x", "something new"]
    )
    assert flags == ("cif_warning:sites_dropped", "cif_warning:symbol_reinterpreted", "cif_warning:other")
    assert len(kept) == 3


# ------------------------------------------------------------------ time limit and crashes
def _slow_for_garnet(original):
    def parse(text, item_id, *args, **kwargs):
        if item_id == "garnet":
            time.sleep(60)
        if item_id == "Co8":
            os._exit(3)  # a parser that kills its process (segfault-like)
        return original(text, item_id, *args, **kwargs)

    return parse


def test_watchdog_kills_hung_parser_and_continues(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Workers are forked, so they inherit the patched parser; the watchdog is the real one.
    monkeypatch.setattr(
        parsers_module, "_parse_cif_text", _slow_for_garnet(parsers_module._parse_cif_text)
    )
    folder = shared_data / "messy_cifs"
    files = [folder / n for n in ("V2O3.cif", "garnet.cif", "Co8.cif", "MgNiF6.cif", "btet_1915.cif")]
    started = time.monotonic()
    result = read_structures(*files, timeout=2, workers=2)
    assert time.monotonic() - started < 30
    reasons = {_file_of(f.source): f.reason for f in result.failures}
    assert reasons["garnet.cif"].startswith("timeout after 2s (allow more with --timeout")
    assert reasons["Co8.cif"].startswith("parser crashed")
    assert sorted(r.id for r in result.records) == ["MgNiF6", "V2O3", "btet_1915"]


def test_inline_mode_time_limit(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        parsers_module,
        "_parse_cif_text",
        lambda *a, **k: time.sleep(30),
    )
    started = time.monotonic()
    result = read_structures(shared_data / "messy_cifs" / "garnet.cif", timeout=1, workers=0)
    assert time.monotonic() - started < 10
    assert result.failures[0].reason.startswith("timeout after 1s (allow more with --timeout")


# ------------------------------------------------------------------ streaming
def test_tables_stream_in_chunks(
    mp20_rows: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tables_module, "TABLE_CHUNK_ROWS", 7)  # 25 rows -> 4 chunks
    mp20_rows.to_csv(tmp_path / "rows.csv", index=False)
    mp20_rows.to_parquet(tmp_path / "rows.parquet")
    for name in ("rows.csv", "rows.parquet"):
        records = read_structures(tmp_path / name, workers=1).records
        assert [r.id for r in records] == list(mp20_rows["material_id"])
        assert [r.source.rsplit("=", 1)[1] for r in records] == [str(i) for i in range(25)]


def test_stopping_early_releases_the_workers(shared_data: Path) -> None:
    import multiprocessing

    stream = iter_structures(shared_data / "alignn_sample_poscar", workers=2)
    first = [next(stream) for _ in range(3)]
    assert all(isinstance(r, StructureRecord) for r in first)
    assert multiprocessing.active_children()
    stream.close()
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not multiprocessing.active_children()


def test_vasp4_poscar_without_species_is_refused(shared_data: Path, tmp_path: Path) -> None:
    lines = (shared_data / "alignn_sample_poscar" / "POSCAR-JVASP-1372.vasp").read_text().splitlines()
    assert lines[5].split() == ["Al", "As"]
    vasp4 = tmp_path / "POSCAR"
    vasp4.write_text("\n".join(["no species here", *lines[1:5], *lines[6:]]) + "\n")
    result = read_structures(vasp4)
    assert not result.records  # pymatgen alone would return an invented "H He" structure
    assert "no species" in result.failures[0].reason


def _count_in_pool_worker(folder: str) -> int:
    return len(read_structures(folder).records)


def test_reading_inside_a_pool_worker(shared_data: Path) -> None:
    import multiprocessing

    # Pool workers are daemonic and may not fork children: the reader falls back to in-process.
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_count_in_pool_worker, (str(shared_data / "cgcnn_sample_classification"),)) == 10
