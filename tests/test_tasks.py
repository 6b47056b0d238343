"""Label recipes on the real data (published class counts are the reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from matcard.errors import ConfigError, MatcardError, UsageError
from matcard.tasks import (
    CRYSTAL_SYSTEMS,
    BinsTask,
    CategoricalTask,
    CrystalSystemTask,
    Labels,
    RangeTask,
    ThresholdTask,
    crystal_system,
    crystal_system_index,
    parse_task,
    task_from_dict,
)


@pytest.mark.parametrize(
    ("number", "system"),
    [
        (1, "triclinic"),
        (2, "triclinic"),
        (3, "monoclinic"),
        (15, "monoclinic"),
        (16, "orthorhombic"),
        (74, "orthorhombic"),
        (75, "tetragonal"),
        (142, "tetragonal"),
        (143, "trigonal"),
        (167, "trigonal"),
        (168, "hexagonal"),
        (194, "hexagonal"),
        (195, "cubic"),
        (230, "cubic"),
    ],
)
def test_crystal_system_boundaries(number: int, system: str) -> None:
    assert crystal_system(number) == system
    assert CRYSTAL_SYSTEMS[crystal_system_index(number)] == system


@pytest.mark.parametrize("number", [0, 231, -5])
def test_crystal_system_rejects_invalid_numbers(number: int) -> None:
    with pytest.raises(ValueError, match=r"1\.\.230"):
        crystal_system_index(number)


def test_crystal_system_from_spacegroup_column(aflow_dataset) -> None:
    labels = CrystalSystemTask().compute(aflow_dataset.table)
    assert labels.class_names == list(CRYSTAL_SYSTEMS)
    assert labels.class_counts() == {
        "triclinic": 4,
        "monoclinic": 22,
        "orthorhombic": 61,
        "tetragonal": 56,
        "trigonal": 37,
        "hexagonal": 42,
        "cubic": 66,
    }
    assert labels.imbalance_ratio == pytest.approx(66 / 4)


def test_crystal_system_from_spglib_and_symprec(aflow_dataset) -> None:
    from_column = aflow_dataset.labels("crystal_system").y
    table = aflow_dataset.table.drop(columns=["spacegroup.number"])
    strict = CrystalSystemTask(symprec=0.01).compute(table, aflow_dataset.structures).y
    np.testing.assert_array_equal(strict, from_column)  # idealised prototypes: spglib agrees
    loose = CrystalSystemTask(symprec=0.5).compute(table, aflow_dataset.structures).y
    assert (loose != from_column).sum() > 0  # a loose tolerance finds higher symmetry for some
    assert (loose >= from_column).all()  # ... never lower: index order follows symmetry here


def test_spglib_in_parallel_matches_sequential(aflow_dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    import matcard.tasks

    structures = aflow_dataset.structures()[:60]
    task = CrystalSystemTask(symprec=0.01)
    sequential = task.spacegroup_numbers(structures, workers=1)
    monkeypatch.setattr(matcard.tasks, "PARALLEL_SPGLIB_MIN", 10)
    parallel = task.spacegroup_numbers(structures, workers=2)
    np.testing.assert_array_equal(parallel, sequential)
    systems = [crystal_system_index(n) for n in sequential]
    assert systems == aflow_dataset.labels("crystal_system").y[:60].tolist()


def test_crystal_system_without_column_or_structures() -> None:
    with pytest.raises(UsageError, match="space-group column or structures"):
        CrystalSystemTask().compute(pd.DataFrame({"id": ["a"]}))


def test_threshold_task_metal_on_mp20(shared_data: Path) -> None:
    table = pd.concat(
        pd.read_csv(shared_data / "mp20_biternary" / f"{n}.csv.gz", usecols=["band_gap"])
        for n in ("val", "test")
    )
    labels = parse_task("band_gap==0").compute(table)
    assert labels.class_counts() == {"negative": 4301, "positive": 9957}
    named = ThresholdTask(
        name="metal", column="band_gap", op="==", value=0, positive="metal", negative="non-metal"
    )
    assert named.compute(table).class_counts() == {"non-metal": 4301, "metal": 9957}


def test_range_task_tg_window_on_glass(shared_data: Path) -> None:
    table = pd.read_csv(shared_data / "glass_tg" / "train_tg.csv")
    labels = parse_task("500<=Tg<=600").compute(table)
    assert labels.class_counts()["positive"] == 8029
    assert RangeTask(name="lo", column="Tg", low=500).compute(table).counts()[1] == (table["Tg"] >= 500).sum()


def test_bins_task() -> None:
    table = pd.DataFrame({"gap": [0.0, 0.49, 0.5, 1.99, 2.0, 10.0]})
    task = parse_task("bins:gap:0.5,2")
    labels = task.compute(table)
    assert labels.class_names == ["<0.5", "[0.5,2)", ">=2"]
    assert labels.y.tolist() == [0, 0, 1, 1, 2, 2]
    named = BinsTask(name="gap_class", column="gap", edges=(0.5, 2.0), names=("metal", "narrow", "wide"))
    assert named.compute(table).class_counts() == {"metal": 2, "narrow": 2, "wide": 2}
    with pytest.raises(ConfigError, match="strictly increasing"):
        BinsTask(name="x", column="gap", edges=(2.0, 1.0))
    with pytest.raises(ConfigError, match="names needs 3"):
        BinsTask(name="x", column="gap", edges=(1.0, 2.0), names=("a", "b"))


def test_categorical_task_on_matbench_glass(shared_data: Path) -> None:
    table = pd.read_csv(shared_data / "matbench_composition" / "glass.csv")  # target is 0.0 / 1.0
    plain = CategoricalTask(name="t", column="target").compute(table)
    assert plain.class_counts() == {"0": 5680 - 4035, "1": 4035}
    mapped = CategoricalTask(
        name="glass", column="target", classes=("no-glass", "glass"), mapping={0: "no-glass", 1: "glass"}
    ).compute(table)
    assert mapped.class_counts() == {"no-glass": 1645, "glass": 4035}
    with pytest.raises(MatcardError, match="not among the classes"):
        CategoricalTask(name="t", column="target", classes=("0",)).compute(table)


def test_missing_column_and_missing_values() -> None:
    table = pd.DataFrame({"a": [1.0, np.nan]})
    with pytest.raises(UsageError, match="needs column 'b'"):
        parse_task("b>1").compute(table)
    with pytest.raises(MatcardError, match="1 missing value"):
        parse_task("a>0").compute(table)


@pytest.mark.parametrize(
    "spec",
    [
        "crystal_system:symprec=0.05",
        "band_gap>=0.5",
        "e_above_hull<0.1",
        "1<=x<=2",
        "bins:x:1,2,3",
        "categorical:x",
    ],
)
def test_tasks_round_trip_through_dicts(spec: str) -> None:
    task = parse_task(spec)
    assert task_from_dict(task.to_dict()) == task


@pytest.mark.parametrize("spec", ["what", "x>>1", "crystal_system:foo=1", "bins:x:2,1", "5<=x<=1"])
def test_bad_task_specs_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError):
        parse_task(spec)


def test_known_tasks_take_precedence() -> None:
    metal = ThresholdTask(name="metal", column="band_gap", op="==", value=0.0)
    assert parse_task("metal", known={"metal": metal}) is metal
    with pytest.raises(UsageError, match="known tasks: metal"):
        parse_task("stable", known={"metal": metal})


def test_labels_helpers() -> None:
    labels = Labels(np.array([0, 2, 2, 2]), ["a", "b", "c"])
    assert labels.class_counts() == {"a": 1, "b": 0, "c": 3}
    assert labels.imbalance_ratio == 3.0  # empty classes are ignored
    assert labels.subset([1, 2]).y.tolist() == [2, 2]
    with pytest.raises(ValueError, match="out of range"):
        Labels(np.array([3]), ["a"])
    with pytest.raises(ConfigError, match="unknown task kind"):
        task_from_dict({"kind": "nope"})
    assert CrystalSystemTask().class_names == list(CRYSTAL_SYSTEMS)
    assert RangeTask(name="r", column="x", low=1).class_names == ["negative", "positive"]
