"""Data preparation for training: dataset -> labels -> features -> train/val/test split.

Identical on every DDP rank; the split is chosen before training with the run's seed and saved as
``RUN/splits/split.json`` (ids + dataset content hash), so resume and evaluate use the same items.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matcard.config import TrainConfig
from matcard.errors import ConfigError, MatcardError
from matcard.fileio import atomic_write_text

if TYPE_CHECKING:
    from torch_geometric.data import Data


@dataclass
class PreparedData:
    """Featurized, labelled items and their split (the same on every DDP rank)."""

    ids: list[str]
    graphs: list[Data]
    y: np.ndarray
    class_names: list[str]
    featurizer: Any
    task: Any
    split: dict[str, np.ndarray]  # "train" / "val" / "test" -> positions into ids/graphs
    failures: list[dict[str, str]]
    training_stats: dict[str, Any]
    dataset_name: str

    def subset(self, name: str) -> tuple[list[Data], np.ndarray]:
        index = self.split[name]
        return [self.graphs[i] for i in index], self.y[index]

    def class_counts(self, name: str = "train") -> np.ndarray:
        return np.bincount(self.y[self.split[name]], minlength=len(self.class_names))


SPLIT_FILE = "splits/split.json"


def featurize_for(
    dataset: Any, featurizer: Any, labels: np.ndarray, *, workers: int, cache: bool, progress: bool
) -> tuple[list[Data], np.ndarray, list[dict[str, str]]]:
    """(graphs with y, their dataset positions, failures) through matcard.featurize's cached store.

    CHGNet graphs (chgnet_finetune's input) are not ``Data``: they have their own cache and carry
    no labels (the loaders pair them with ``y``).
    """
    import tempfile

    from matcard.featurize import featurize_dataset

    if getattr(featurizer, "kind", None) == "chgnet_graph":
        from matcard.featurize.chgnet_graphs import crystal_graphs_for

        return crystal_graphs_for(dataset, featurizer, cache=cache, progress=progress)

    with tempfile.TemporaryDirectory(prefix="matcard-features-") as scratch:
        report = featurize_dataset(
            dataset,
            featurizer,
            jobs=workers,
            progress=progress,
            out=None if cache else Path(scratch) / "store",
        )
        positions = report.store.positions()
        graphs = report.store.load(labels)
    failures = [{"id": f.id, "stage": "featurize", "reason": f.reason} for f in report.failures]
    return graphs, np.asarray(positions, dtype=np.int64), failures


def training_stats(dataset: Any, positions: np.ndarray) -> dict[str, Any]:
    """What the model saw in training (screening flags inputs outside it): elements with counts,
    ranges of atoms per cell and volume per atom."""
    from collections import Counter

    elements: Counter[str] = Counter()
    stats: dict[str, Any] = {"n_train": len(positions)}
    store = getattr(dataset, "store", None)
    if store is not None and hasattr(store, "offsets"):
        offsets = np.asarray(store.offsets)
        n_atoms = (offsets[positions + 1] - offsets[positions]).astype(np.int64)
        volumes = np.abs(np.linalg.det(np.asarray(store.lattices)[positions]))
        for p in positions.tolist():
            for species in store.species[int(offsets[p]) : int(offsets[p + 1])]:
                if species.startswith("{"):  # disordered site: {"Fe": 0.5, ...}
                    import json

                    elements.update(json.loads(species))
                else:
                    elements[species] += 1
        stats["n_atoms"] = {"min": int(n_atoms.min()), "max": int(n_atoms.max())}
        per_atom = volumes / np.maximum(n_atoms, 1)
        stats["volume_per_atom"] = {"min": float(per_atom.min()), "max": float(per_atom.max())}
    elif getattr(dataset, "kind", "") == "structures":
        structures = [dataset.structure(int(p)) for p in positions]
        for structure in structures:
            elements.update(str(el) for el in structure.composition.elements)
        n_atoms_list = [len(s) for s in structures]
        per_atom_list = [s.volume / len(s) for s in structures]
        stats["n_atoms"] = {"min": min(n_atoms_list), "max": max(n_atoms_list)}
        stats["volume_per_atom"] = {"min": float(min(per_atom_list)), "max": float(max(per_atom_list))}
    else:
        compositions = dataset.compositions()
        for p in positions.tolist():
            elements.update(str(el) for el in compositions[p].elements)
    # element symbols only (a disordered site's species may carry oxidation states)
    stats["elements"] = dict(sorted(Counter({_element_symbol(k): v for k, v in elements.items()}).items()))
    return stats


def _element_symbol(species: str) -> str:
    import re

    match = re.match(r"[A-Z][a-z]?", species)
    return match.group(0) if match else species


def prepare_data(
    config: TrainConfig,
    run_dir: Path | None,
    *,
    write: bool = True,
    resuming: bool = False,
    progress: bool = True,
) -> PreparedData:
    """Load, label, featurize and split; the split is saved in ``run_dir/splits`` (or reused)."""
    from matcard.datasets import load_dataset
    from matcard.featurize import featurizer_from_config

    data_cfg = config.data
    kind = config.featurizer_kind()
    dataset = load_dataset(
        data_cfg.dataset, mirror=data_cfg.mirror, progress=progress, timeout=data_cfg.timeout
    )
    if kind in ("graph", "chgnet", "chgnet_graph") and dataset.kind != "structures":
        raise ConfigError(
            f"model.name: {config.model.name!r} with {kind!r} features needs crystal structures, but "
            f"dataset {dataset.name!r} holds compositions only; use model.name=mlp with composition features"
        )
    task = dataset.task(data_cfg.task)
    labels = dataset.labels(task)
    if config.decision.enabled:  # an objective naming an unknown class fails before featurizing
        from matcard.calibration import parse_objective

        parse_objective(config.decision.objective, list(labels.class_names))
    featurizer = featurizer_from_config(config.featurizer_settings())
    graphs, positions, failures = featurize_for(
        dataset,
        featurizer,
        labels.y,
        workers=config.featurizer.workers,
        cache=config.featurizer.cache,
        progress=progress,
    )
    failures = [
        {
            "id": str(getattr(f, "source", "")),
            "stage": "read",
            "reason": str(getattr(f, "reason", f)),
            "detail": str(getattr(f, "detail", "")),
        }
        for f in dataset.failures
    ] + failures
    if not graphs:
        raise MatcardError(f"no item of {dataset.name!r} could be featurized; first failures: {failures[:3]}")
    all_ids = dataset.ids
    ids = [all_ids[p] for p in positions]
    y = labels.y[positions]
    split = _make_or_load_split(config, run_dir, dataset, ids, y, positions, write=write, resuming=resuming)
    if write and run_dir is not None and failures:
        _write_failures(run_dir / "failures.csv", failures)
    return PreparedData(
        ids=ids,
        graphs=graphs,
        y=y,
        class_names=list(labels.class_names),
        featurizer=featurizer,
        task=task,
        split=split,
        failures=failures,
        training_stats=training_stats(dataset, positions[split["train"]]),
        dataset_name=str(dataset.name),
    )


def _write_failures(path: Path, failures: list[dict[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=["id", "stage", "reason", "detail"], lineterminator="\n", restval=""
    )
    writer.writeheader()
    writer.writerows(failures)
    atomic_write_text(path, buffer.getvalue())


SPLIT_NAMES = ("train", "val", "test")


def _make_or_load_split(
    config: TrainConfig,
    run_dir: Path | None,
    dataset: Any,
    ids: list[str],
    y: np.ndarray,
    positions: np.ndarray,
    *,
    write: bool,
    resuming: bool,
) -> dict[str, np.ndarray]:
    """Stratified train/val/test positions into ``ids`` (chosen before training, with the seed).

    Saved as a matcard.splits index file (with the ids and the dataset's content hash), so resume and
    evaluate use exactly the same items; a changed dataset is detected instead of silently mixed.
    """
    from matcard import splits

    path = None if run_dir is None else run_dir / SPLIT_FILE
    if path is not None and path.is_file() and (resuming or not write):
        saved = splits.Split.load(path, ids=ids, content_hash=str(dataset.content_hash))
        return {name: getattr(saved, name) for name in (*SPLIT_NAMES, "calibration")}
    data_cfg = config.data
    subset = np.arange(len(ids))
    if data_cfg.limit is not None and data_cfg.limit < len(ids):
        subset = _stratified_subset(y, data_cfg.limit, config.trainer.seed)
    groups = None
    if data_cfg.group_by_formula:
        if "reduced_formula" in dataset.table.columns:
            formulas = dataset.table["reduced_formula"].astype(str).to_numpy()
        else:
            formulas = np.asarray(splits.reduced_formula_groups(dataset.compositions()), dtype=object)
        groups = formulas[positions[subset]].tolist()
    fractions = (
        1.0 - data_cfg.val_fraction - data_cfg.test_fraction,
        data_cfg.val_fraction,
        data_cfg.test_fraction,
    )
    if data_cfg.split == "given":
        parts, meta = _given_split(config, dataset, y, positions, subset, groups)
    else:
        split = splits.stratified_split(
            y[subset], fractions=fractions, seed=config.trainer.seed, groups=groups
        )
        parts, meta = {name: subset[split.parts[name]] for name in SPLIT_NAMES}, split.meta
    parts["train"], parts["calibration"] = _carve_calibration(config, y, parts, groups, subset)
    for name in ("train", "val"):
        if len(parts[name]) == 0:
            raise MatcardError(
                f"the {name} split is empty: {len(subset)} items are too few for these split fractions"
            )
    if write and path is not None:
        saved = splits.Split(
            parts["train"],
            parts["val"],
            parts["test"],
            calibration=parts["calibration"],
            meta={
                **meta,
                "dataset": str(dataset.name),
                "content_hash": str(dataset.content_hash),
                "task": getattr(dataset.task(config.data.task), "name", config.data.task),
                "limit": data_cfg.limit,
                "calibration_fraction": data_cfg.calibration_fraction,
            },
        )
        saved.save(path, ids=ids)
    return parts


def _carve_calibration(
    config: TrainConfig,
    y: np.ndarray,
    parts: dict[str, np.ndarray],
    groups: list[str] | None,
    subset: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(train, calibration): ``data.calibration_fraction`` of the data, stratified and seeded, taken
    from the training portion only, so val and test are exactly those of a run without it."""
    from matcard import splits

    train = parts["train"]
    fraction = config.data.calibration_fraction
    if fraction <= 0 or len(train) < 2:
        return train, np.zeros(0, dtype=np.int64)
    total = sum(len(part) for part in parts.values())
    share = min(0.5, fraction * total / len(train))
    train_groups = None
    if groups is not None:
        by_position = dict(zip(subset.tolist(), groups, strict=True))
        train_groups = [by_position[int(i)] for i in train]
    inner = splits.stratified_split(
        y[train], fractions=(1.0 - share, share, 0.0), seed=config.trainer.seed, groups=train_groups
    )
    return train[inner.train], train[inner.val]


def _stratified_subset(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Exactly ``size`` positions, each class keeping its share (up to rounding), sorted."""
    from matcard import splits

    fraction = size / len(y)
    chosen = splits.stratified_split(y, fractions=(fraction, 1.0 - fraction, 0.0), seed=seed).train
    rng = np.random.default_rng(seed)
    if len(chosen) > size:  # per-class rounding overshot: drop a few at random
        chosen = rng.choice(chosen, size=size, replace=False)
    elif len(chosen) < size:  # or undershot: add a few of the rest at random
        rest = np.setdiff1d(np.arange(len(y)), chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, size=size - len(chosen), replace=False)])
    return np.sort(chosen)


def _given_split(
    config: TrainConfig,
    dataset: Any,
    y: np.ndarray,
    positions: np.ndarray,
    subset: np.ndarray,
    groups: list[str] | None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Test = the dataset's published held-out part; val carved (stratified) from the rest."""
    from matcard import splits

    given = dataset.given_splits()
    held_out_name = next((name for name in ("test", "validation", "val") if name in given), None)
    if held_out_name is None:
        raise ConfigError(
            f"data.split: dataset {dataset.name!r} publishes no split (given: {sorted(given) or 'none'}); "
            "use data.split=stratified"
        )
    held_out = np.isin(positions[subset], given[held_out_name])
    rest = subset[~held_out]
    val_share = config.data.val_fraction / (1.0 - config.data.test_fraction)
    rest_groups = None if groups is None else [g for g, h in zip(groups, held_out, strict=True) if not h]
    inner = splits.stratified_split(
        y[rest], fractions=(1.0 - val_share, val_share, 0.0), seed=config.trainer.seed, groups=rest_groups
    )
    parts = {"train": rest[inner.train], "val": rest[inner.val], "test": subset[held_out]}
    return parts, {"kind": "given", "test_part": held_out_name, "seed": config.trainer.seed}


