"""Splits: stratification holds, groups never straddle parts, index files round-trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from matcard.errors import ConfigError, MatcardError
from matcard.splits import (
    Split,
    grouped_split,
    load_folds,
    reduced_formula_groups,
    save_folds,
    split_dataset,
    stratified_kfold,
    stratified_split,
)


@pytest.fixture(scope="module")
def aflow_y(aflow_dataset) -> np.ndarray:
    return aflow_dataset.labels("crystal_system").y


def _assert_partition(split: Split, n: int) -> None:
    split.check_disjoint()
    assert np.array_equal(np.sort(np.concatenate(list(split.parts.values()))), np.arange(n))


def test_stratified_split_keeps_class_shares(aflow_y: np.ndarray) -> None:
    fractions = (0.7, 0.15, 0.15)
    split = stratified_split(aflow_y, fractions=fractions, seed=3)
    _assert_partition(split, len(aflow_y))
    for part, fraction in zip(("train", "val", "test"), fractions, strict=True):
        got = np.bincount(aflow_y[split.parts[part]], minlength=7)
        want = fraction * np.bincount(aflow_y, minlength=7)
        assert np.all(np.abs(got - want) < 1.0 + 1e-9), (part, got, want)
    # the 4-member triclinic class is not lost from training
    assert (aflow_y[split.train] == 0).sum() >= 2


def test_stratified_split_is_reproducible_and_seeded(aflow_y: np.ndarray) -> None:
    a = stratified_split(aflow_y, seed=1)
    b = stratified_split(aflow_y, seed=1)
    c = stratified_split(aflow_y, seed=2)
    assert np.array_equal(a.test, b.test)
    assert not np.array_equal(a.test, c.test)
    assert a.meta["kind"] == "stratified" and a.meta["seed"] == 1


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.8, 0.1, 0.2), (1.2, -0.1, -0.1)])
def test_bad_fractions(aflow_y: np.ndarray, fractions: tuple[float, ...]) -> None:
    with pytest.raises(ConfigError, match="fractions"):
        stratified_split(aflow_y, fractions=fractions)


@pytest.mark.slow
def test_grouped_split_on_mp20_keeps_polymorphs_together(mp20_dataset) -> None:
    y = mp20_dataset.labels("crystal_system").y
    formulas = mp20_dataset.table["reduced_formula"].to_numpy()
    assert len(set(formulas)) < len(formulas)  # there are polymorphs to keep together
    split = grouped_split(y, formulas, fractions=(0.8, 0.1, 0.1), seed=0)
    _assert_partition(split, len(y))
    sides = [set(formulas[idx]) for idx in split.parts.values()]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    overall = np.bincount(y, minlength=7) / len(y)
    for part, fraction in zip(("train", "val", "test"), (0.8, 0.1, 0.1), strict=True):
        idx = split.parts[part]
        assert abs(len(idx) / len(y) - fraction) < 0.02
        shares = np.bincount(y[idx], minlength=7) / len(idx)
        assert np.abs(shares - overall).max() < 0.02, (part, shares, overall)


def test_stratified_split_with_groups_delegates(aflow_dataset, aflow_y: np.ndarray) -> None:
    groups = reduced_formula_groups(aflow_dataset.structures())
    split = stratified_split(aflow_y, groups=groups, seed=0)
    assert split.meta["kind"] == "grouped"
    by_part = {name: {groups[i] for i in idx} for name, idx in split.parts.items()}
    assert not (by_part["train"] & by_part["test"])


def test_stratified_kfold(aflow_y: np.ndarray) -> None:
    folds = stratified_kfold(aflow_y, k=4, seed=0)
    assert len(folds) == 4
    validation = np.concatenate([f.val for f in folds])
    assert np.array_equal(np.sort(validation), np.arange(len(aflow_y)))
    for fold in folds:
        _assert_partition(fold, len(aflow_y))
        got = np.bincount(aflow_y[fold.val], minlength=7)
        assert np.all(np.abs(got - np.bincount(aflow_y, minlength=7) / 4) <= 1.0)
    with pytest.raises(ConfigError, match="at least 2"):
        stratified_kfold(aflow_y, k=1)


def test_grouped_kfold(aflow_dataset, aflow_y: np.ndarray) -> None:
    groups = np.array(reduced_formula_groups(aflow_dataset.structures()))
    folds = stratified_kfold(aflow_y, k=3, seed=0, groups=groups)
    owner: dict[str, int] = {}
    for i, fold in enumerate(folds):
        for g in set(groups[fold.val]):
            assert owner.setdefault(g, i) == i  # each formula validates in one fold only


def test_split_files_round_trip_and_guard_the_dataset(aflow_dataset, tmp_path: Path) -> None:
    path = tmp_path / "splits" / "aflow.json"
    split = split_dataset(aflow_dataset, "crystal_system", seed=5, group_by_formula=True, path=path)
    assert split.meta["content_hash"] == aflow_dataset.content_hash and split.meta["task"] == "crystal_system"
    loaded = Split.load(path, ids=aflow_dataset.ids, content_hash=aflow_dataset.content_hash)
    for name in ("train", "val", "test"):
        assert np.array_equal(loaded.parts[name], split.parts[name])
    shuffled = list(reversed(aflow_dataset.ids))
    with pytest.raises(MatcardError, match="different ids"):
        Split.load(path, ids=shuffled)
    with pytest.raises(MatcardError, match="another dataset"):
        Split.load(path, content_hash="0" * 64)
    with pytest.raises(MatcardError, match="beyond"):
        Split.load(path, ids=aflow_dataset.ids[:10])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(MatcardError, match="not a matcard split"):
        Split.load(tmp_path / "bad.json")


def test_folds_round_trip(aflow_y: np.ndarray, tmp_path: Path) -> None:
    folds = stratified_kfold(aflow_y, k=3, seed=0)
    save_folds(folds, tmp_path / "folds")
    loaded = load_folds(tmp_path / "folds")
    assert [f.meta["fold"] for f in loaded] == [0, 1, 2]
    assert all(np.array_equal(a.val, b.val) for a, b in zip(folds, loaded, strict=True))
    with pytest.raises(MatcardError, match="no fold"):
        load_folds(tmp_path)
