"""Reproducible splits: stratified train/val/test, stratified k-fold, and grouped variants that keep
every group (e.g. a reduced formula, so that polymorphs never straddle splits) on one side.

Splits are index arrays into a dataset's rows, saved as JSON index files (with the row ids, the
seed and the dataset's content hash) so that every later run reuses exactly the same rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from matcard.errors import ConfigError, MatcardError
from matcard.fileio import atomic_write_json

SPLIT_FORMAT = "matcard-split/1"


@dataclass
class Split:
    """Row indices of each part (``train``, ``val``, ``test``; a k-fold split has no ``test``)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    meta: dict[str, Any] = field(default_factory=dict)
    # carved from the training portion to calibrate conformal sets (matcard.decision); often empty
    calibration: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        for name in ("train", "val", "test", "calibration"):
            setattr(self, name, np.sort(np.asarray(getattr(self, name), dtype=np.int64)))

    @property
    def parts(self) -> dict[str, np.ndarray]:
        parts = {"train": self.train, "val": self.val, "test": self.test}
        if len(self.calibration):
            parts["calibration"] = self.calibration
        return parts

    def __len__(self) -> int:
        return sum(len(v) for v in self.parts.values())

    def check_disjoint(self) -> None:
        seen = np.concatenate(list(self.parts.values()))
        if len(np.unique(seen)) != len(seen):
            raise MatcardError("split parts overlap")

    def save(self, path: str | os.PathLike[str], ids: Sequence[str] | None = None) -> Path:
        """Write the index file (atomically). ``ids`` are stored to detect a different dataset."""
        target = Path(path)
        document: dict[str, Any] = {"format": SPLIT_FORMAT, "meta": self.meta}
        for name, indices in self.parts.items():
            document[name] = indices.tolist()
        if ids is not None:
            document["ids"] = {name: [str(ids[i]) for i in idx] for name, idx in self.parts.items()}
        atomic_write_json(target, document)
        return target

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        ids: Sequence[str] | None = None,
        content_hash: str | None = None,
    ) -> Split:
        """Read an index file; with ``ids`` / ``content_hash``, check it belongs to that dataset."""
        try:
            document = json.loads(Path(path).read_text())
        except FileNotFoundError as err:
            raise MatcardError(f"split file not found: {path}") from err
        except json.JSONDecodeError as err:
            raise MatcardError(f"split file {path} is not valid JSON: {err}") from err
        if document.get("format") != SPLIT_FORMAT:
            raise MatcardError(f"{path} is not a matcard split file (format {document.get('format')!r})")
        split = cls(
            train=np.asarray(document["train"]),
            val=np.asarray(document["val"]),
            test=np.asarray(document.get("test", [])),
            meta=document.get("meta", {}),
            calibration=np.asarray(document.get("calibration", [])),
        )
        expected_hash = split.meta.get("content_hash")
        if content_hash is not None and expected_hash is not None and expected_hash != content_hash:
            raise MatcardError(f"split {path} was made for another dataset (content hash differs)")
        if ids is not None:
            if len(split) and max(int(idx.max()) for idx in split.parts.values() if len(idx)) >= len(ids):
                raise MatcardError(f"split {path} indexes rows beyond this dataset's {len(ids)} rows")
            stored = document.get("ids")
            if stored is not None:
                for name, idx in split.parts.items():
                    if [str(ids[i]) for i in idx] != stored.get(name, []):
                        raise MatcardError(
                            f"split {path}: the '{name}' rows have different ids in this dataset"
                        )
        return split


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions):
        raise ConfigError(f"split fractions must be three non-negative numbers, got {list(fractions)}")
    total = float(sum(fractions))
    if not np.isclose(total, 1.0, atol=1e-6):
        raise ConfigError(f"split fractions must sum to 1, got {list(fractions)} (sum {total:g})")
    return float(fractions[0]), float(fractions[1]), float(fractions[2])


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder allocation of n items to parts in proportion to fractions."""
    raw = np.asarray(fractions, dtype=float) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def stratified_split(
    y: Sequence[int] | np.ndarray,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    groups: Sequence[Any] | None = None,
) -> Split:
    """Train/val/test split keeping every class's share in each part (exact up to rounding).

    With ``groups`` (e.g. reduced formulas) whole groups are assigned, see :func:`grouped_split`.
    """
    if groups is not None:
        return grouped_split(y, groups, fractions=fractions, seed=seed)
    y = np.asarray(y)
    f = _check_fractions(fractions)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        rng.shuffle(members)
        # Rounding in favour of val/test for tiny classes keeps a minority example in each part
        # only when the class is large enough to spare it; train always gets the remainder.
        counts = _allocate(len(members), f)
        start = 0
        for part, count in zip(parts, counts, strict=True):
            part.extend(members[start : start + count].tolist())
            start += count
    meta = {"kind": "stratified", "fractions": list(f), "seed": seed, "n": len(y)}
    return Split(np.array(parts[0]), np.array(parts[1]), np.array(parts[2]), meta=meta)


def grouped_split(
    y: Sequence[int] | np.ndarray,
    groups: Sequence[Any],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> Split:
    """Train/val/test split in which each group lies entirely in one part, stratified greedily.

    Groups are visited largest first (ties in seeded random order) and each goes to the part
    whose per-class counts are furthest below their targets, so class shares stay close to the
    overall ones while no group (e.g. reduced formula) straddles two parts.
    """
    y = np.asarray(y)
    f = np.asarray(_check_fractions(fractions))
    if len(groups) != len(y):
        raise ConfigError(f"groups has {len(groups)} entries for {len(y)} labels")
    classes, y_index = np.unique(y, return_inverse=True)
    group_keys, group_index = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    n_groups, n_classes = len(group_keys), len(classes)
    group_counts = np.zeros((n_groups, n_classes), dtype=np.int64)
    np.add.at(group_counts, (group_index, y_index), 1)
    targets = f[:, None] * np.bincount(y_index, minlength=n_classes)[None, :]  # parts x classes
    filled = np.zeros_like(targets)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_groups)
    order = order[np.argsort(-group_counts[order].sum(axis=1), kind="stable")]
    assignment = np.empty(n_groups, dtype=np.int64)
    active = f > 0
    for g in order:
        counts = group_counts[g]
        # Remaining room of each part relative to its target, weighted by this group's classes.
        relative_room = (targets - filled) / np.maximum(targets, 1e-9)
        score = np.where(
            active, (relative_room * counts[None, :]).sum(axis=1) / max(counts.sum(), 1), -np.inf
        )
        part = int(np.argmax(score))
        assignment[g] = part
        filled[part] += counts
    row_part = assignment[group_index]
    meta = {"kind": "grouped", "fractions": f.tolist(), "seed": seed, "n": len(y), "n_groups": n_groups}
    return Split(*(np.flatnonzero(row_part == p) for p in range(3)), meta=meta)


def stratified_kfold(
    y: Sequence[int] | np.ndarray,
    k: int = 5,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
) -> list[Split]:
    """k stratified folds (scikit-learn); fold i validates on part i and trains on the rest.

    With ``groups``, StratifiedGroupKFold keeps each group inside one fold.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(y)
    if k < 2:
        raise ConfigError(f"k must be at least 2, got {k}")
    if k > len(y):
        raise ConfigError(f"k={k} folds need at least {k} rows, got {len(y)}")
    import warnings

    with warnings.catch_warnings():
        # "The least populated class has only n members": folds still stratify what they can.
        warnings.simplefilter("ignore", UserWarning)
        if groups is None:
            splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
            folds = list(splitter.split(np.zeros(len(y)), y))
        else:
            group_ids = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
            grouped = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            folds = list(grouped.split(np.zeros(len(y)), y, group_ids))
    kind = "grouped_kfold" if groups is not None else "stratified_kfold"
    return [
        Split(train, val, meta={"kind": kind, "k": k, "fold": i, "seed": seed, "n": len(y)})
        for i, (train, val) in enumerate(folds)
    ]


def reduced_formula_groups(structures_or_compositions: Sequence[Any]) -> list[str]:
    """Reduced formula of each structure / composition (the polymorph group)."""
    out = []
    for item in structures_or_compositions:
        composition = getattr(item, "composition", item)
        out.append(composition.reduced_formula)
    return out


def split_dataset(
    dataset: Any,
    task: Any = None,
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    group_by_formula: bool = False,
    path: str | os.PathLike[str] | None = None,
) -> Split:
    """Stratified (optionally formula-grouped) split of a :class:`matcard.datasets.Dataset`.

    The split records the dataset's content hash and task; with ``path`` it is saved there.
    """
    labels = dataset.labels(task)
    groups = None
    if group_by_formula:
        groups = (
            dataset.table["reduced_formula"].astype(str).tolist()
            if "reduced_formula" in dataset.table.columns
            else reduced_formula_groups(dataset.compositions())
        )
    split = stratified_split(labels.y, fractions=fractions, seed=seed, groups=groups)
    split.meta.update({"dataset": dataset.name, "content_hash": dataset.content_hash})
    split.meta["task"] = getattr(dataset.task(task), "name", str(task))
    if path is not None:
        split.save(path, ids=dataset.ids)
    return split


def save_folds(
    folds: Sequence[Split], directory: str | os.PathLike[str], ids: Sequence[str] | None = None
) -> Path:
    """Write ``fold-0.json`` ... into ``directory``."""
    root = Path(directory)
    for i, fold in enumerate(folds):
        fold.save(root / f"fold-{i}.json", ids=ids)
    return root


def load_folds(
    directory: str | os.PathLike[str], ids: Sequence[str] | None = None, content_hash: str | None = None
) -> list[Split]:
    paths = sorted(Path(directory).glob("fold-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    if not paths:
        raise MatcardError(f"no fold-*.json files in {directory}")
    return [Split.load(p, ids=ids, content_hash=content_hash) for p in paths]


__all__ = [
    "Split",
    "grouped_split",
    "load_folds",
    "reduced_formula_groups",
    "save_folds",
    "split_dataset",
    "stratified_kfold",
    "stratified_split",
]
