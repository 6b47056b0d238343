"""load_dataset on the real registry datasets and on paths; the Parquet cache."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from matcard.datasets import REGISTRY, Dataset, get_spec, load_dataset
from matcard.datasets.cache import StructureStore
from matcard.errors import MatcardError, UsageError

MP20_COUNTS = {
    "triclinic": 391,
    "monoclinic": 1733,
    "orthorhombic": 2991,
    "tetragonal": 2509,
    "trigonal": 1470,
    "hexagonal": 1823,
    "cubic": 3341,
}


def test_registry_entries_are_complete() -> None:
    assert set(REGISTRY) == {
        "aflow-prototypes",
        "mp20-biternary",
        "perov5",
        "glass-tg",
        "matbench-mp-is-metal",
        "matbench-glass",
        "matbench-expt-is-metal",
        "materials-project",
    }
    for spec in REGISTRY.values():
        assert spec.licence and spec.citation and spec.tasks and spec.description
        assert spec.embedded or spec.live or spec.files
        assert spec.default_task in spec.tasks
    with pytest.raises(UsageError, match="Did you mean mp20-biternary"):
        get_spec("mp20-bitenary")


def test_aflow_prototypes_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATCARD_MIRROR", "http://127.0.0.1:9")  # unreachable: nothing may be fetched
    dataset = load_dataset("aflow-prototypes", progress=False)
    assert len(dataset) == 288 and dataset.kind == "structures"
    counts = dataset.labels("crystal_system").class_counts()
    assert counts == {
        "triclinic": 4,
        "monoclinic": 22,
        "orthorhombic": 61,
        "tetragonal": 56,
        "trigonal": 37,
        "hexagonal": 42,
        "cubic": 66,
    }
    assert dataset.ids[0] == dataset.table["aflow"][0]
    assert len(set(dataset.ids)) == 288
    assert dataset.structures()[0].composition.reduced_formula == dataset.table["reduced_formula"][0]


@pytest.mark.slow
def test_mp20_counts_cache_and_lazy_structures(
    mp20_dataset: Dataset, session_data_dir: Path, file_mirror: str
) -> None:
    assert len(mp20_dataset) == 14258 and not mp20_dataset.failures
    assert mp20_dataset.labels("crystal_system").class_counts() == MP20_COUNTS
    assert mp20_dataset.labels("metal").class_counts() == {"non-metal": 4301, "metal": 9957}
    stable = mp20_dataset.labels("stable")
    assert stable.class_counts()["stable"] == int((mp20_dataset.table["e_above_hull"] == 0).sum())
    assert list(mp20_dataset.table["source_file"].value_counts().sort_index()) == [7118, 7140]

    started = time.perf_counter()
    again = load_dataset("mp20-biternary", mirror=file_mirror, data_dir=session_data_dir, progress=False)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"second load took {elapsed:.2f}s"
    assert again.content_hash == mp20_dataset.content_hash
    assert again.ids == mp20_dataset.ids

    # structures rebuilt from the compact cache equal a direct pymatgen parse of the same rows
    from pymatgen.io.cif import CifParser

    raw = pd.read_csv(session_data_dir / "mp20_biternary" / "val.csv.gz", nrows=5)
    for i, cif in enumerate(raw["cif"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            direct = CifParser.from_str(cif).parse_structures(primitive=False)[0]
        cached = again.structure(i)
        assert again.ids[i] == raw["material_id"][i]
        assert cached.composition == direct.composition
        np.testing.assert_allclose(cached.lattice.matrix, direct.lattice.matrix, atol=1e-8)
        np.testing.assert_allclose(cached.frac_coords, direct.frac_coords, atol=1e-8)


@pytest.mark.slow
def test_perov5_gapped(file_mirror: str, session_data_dir: Path) -> None:
    dataset = load_dataset("perov5", mirror=file_mirror, data_dir=session_data_dir, progress=False)
    assert len(dataset) == 7572
    assert dataset.labels("gapped").class_counts() == {"no-gap": 7572 - 294, "gapped": 294}
    assert all(n == 5 for n in dataset.store.n_sites())


def test_glass_tg_keeps_given_split_and_builds_compositions(file_mirror: str, session_data_dir: Path) -> None:
    dataset = load_dataset("glass-tg", mirror=file_mirror, data_dir=session_data_dir, progress=False)
    assert dataset.kind == "compositions" and len(dataset) == 28153 + 7023
    given = dataset.given_splits()
    assert {k: len(v) for k, v in given.items()} == {"train": 28153, "validation": 7023}
    from matcard.datasets.inspect import summarize

    summary = summarize(dataset)
    assert summary["given_splits"] == {"train": 28153, "validation": 7023}
    assert summary["class_counts"] == {"outside": 35176 - 9971, "window": 8029 + 1942}
    labels = dataset.labels("tg_window")
    assert int(labels.y[given["train"]].sum()) == 8029
    assert int(labels.y[given["validation"]].sum()) == 1942
    first = dataset.subset([0]).compositions()[0]
    row = dataset.table.iloc[0]
    # SiO2 35.90129, Na2O 27.75666, ZrO2 15.11516, P2O5 21.22689 (mol %)
    assert first["Si"] == pytest.approx(row["SiO2"])
    assert first["Na"] == pytest.approx(2 * row["Na2O"])
    assert first["P"] == pytest.approx(2 * row["P2O5"])
    assert first["O"] == pytest.approx(2 * row["SiO2"] + row["Na2O"] + 2 * row["ZrO2"] + 5 * row["P2O5"])


@pytest.mark.parametrize(
    ("name", "rows", "positives", "task"),
    [("matbench-glass", 5680, 4035, "glass"), ("matbench-expt-is-metal", 4921, 2451, "metal")],
)
def test_matbench_compositions(
    name: str, rows: int, positives: int, task: str, file_mirror: str, session_data_dir: Path
) -> None:
    dataset = load_dataset(name, mirror=file_mirror, data_dir=session_data_dir, progress=False)
    assert len(dataset) == rows and not dataset.failures
    labels = dataset.labels(task)
    assert labels.counts().tolist() == [rows - positives, positives]
    assert labels.class_names[1] == task
    assert len(dataset.compositions()) == len(dataset)
    with pytest.raises(UsageError, match="compositions, not structures"):
        dataset.structures()


def test_download_false_requires_files(tmp_path: Path) -> None:
    with pytest.raises(MatcardError, match="matcard download perov5"):
        load_dataset("perov5", data_dir=tmp_path, download=False, progress=False)


def test_unknown_names_and_paths() -> None:
    with pytest.raises(UsageError, match="unknown dataset 'nonsense'"):
        load_dataset("nonsense", progress=False)
    with pytest.raises(UsageError, match="no such file"):
        load_dataset("./no/such/folder", progress=False)
    with pytest.raises(UsageError, match="unexpected options"):
        load_dataset("aflow-prototypes", elements=["Si"], progress=False)


def test_path_datasets(shared_data: Path) -> None:
    cgcnn = load_dataset(shared_data / "cgcnn_sample_classification", progress=False)
    assert len(cgcnn) == 10 and cgcnn.default_task == "label"
    assert cgcnn.labels().class_counts() == {"0": 5, "1": 5}
    assert set(cgcnn.tasks) == {"crystal_system", "label"}
    alignn = load_dataset(shared_data / "alignn_sample_poscar", progress=False)
    assert len(alignn) == 70 and "label" not in alignn.tasks  # continuous values are not classes
    system = alignn.labels("crystal_system")
    assert sum(system.class_counts().values()) == 70
    table = load_dataset(shared_data / "matbench_composition" / "expt_is_metal.csv", progress=False)
    assert table.kind == "compositions" and len(table) == 4921
    assert table.labels("label").class_counts() == {"0": 4921 - 2451, "1": 2451}


def test_subset_and_content_hash(aflow_dataset: Dataset) -> None:
    first = aflow_dataset.subset(range(10))
    assert len(first) == 10 and first.ids == aflow_dataset.ids[:10]
    assert first.content_hash != aflow_dataset.content_hash
    assert first.content_hash == aflow_dataset.subset(range(10)).content_hash
    assert first.structures()[3] == aflow_dataset.structures()[3]
    rebuilt = StructureStore(
        aflow_dataset.store.lattices,
        aflow_dataset.store.species,
        aflow_dataset.store.frac_coords,
        aflow_dataset.store.offsets,
    ).subset([5, 7])
    assert rebuilt.structure(1) == aflow_dataset.structures()[7]
    records = first.records()
    assert [r.id for r in records] == first.ids
    assert aflow_dataset.store.compositions() == [s.composition for s in aflow_dataset.structures()]


def test_disordered_structures_survive_the_cache(shared_data: Path, tmp_path: Path) -> None:
    from matcard.datasets.cache import read_parsed, write_parsed

    kept = load_dataset(shared_data / "messy_cifs" / "Cu7Te5.cif", disorder="keep", progress=False)
    assert len(kept) == 1 and not kept.structures()[0].is_ordered
    write_parsed(tmp_path / "x.parquet", kept.table, kept.store, {"name": "x"})
    _, store, _ = read_parsed(tmp_path / "x.parquet")
    assert store.structure(0) == kept.structures()[0]
    assert store.flags[0] == ("disordered_kept",)
    assert store.compositions()[0].almost_equals(kept.structures()[0].composition)
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    assert read_parsed(tmp_path / "broken.parquet") is None


def test_path_dataset_ids_are_unique(shared_data: Path) -> None:
    folder = shared_data / "cgcnn_sample_classification"
    twice = load_dataset([folder, folder], progress=False)
    assert len(twice) == 20 and len(set(twice.ids)) == 20
    assert twice.ids[10] == twice.ids[0] + "#2"


def test_path_parse_cache_is_reused_and_invalidated(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import shutil

    import matcard.structures

    folder = tmp_path / "cgcnn"
    shutil.copytree(shared_data / "cgcnn_sample_classification", folder)
    first = load_dataset(folder, data_dir=tmp_path / "cache", cache=True, progress=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("parsed again although the files did not change")

    monkeypatch.setattr(matcard.structures, "read_structures", forbidden)
    again = load_dataset(folder, data_dir=tmp_path / "cache", cache=True, progress=False)
    assert again.ids == first.ids and again.content_hash == first.content_hash
    assert again.labels().class_counts() == {"0": 5, "1": 5}
    assert [s.reason for s in again.skipped] == ["label file (id_prop.csv)"]
    assert again.structures()[2] == first.structures()[2]

    victim = next(folder.glob("*.cif"))
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="parsed again"):
        load_dataset(folder, data_dir=tmp_path / "cache", cache=True, progress=False)
