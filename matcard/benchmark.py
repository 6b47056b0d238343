"""`matcard benchmark`: every loss on one task, over several seeds, paired against cross-entropy.

A **study** (a YAML file in ``configs/benchmarks/``, or options of ``matcard benchmark``) names a
task, a list of loss entries and seeds. Every (loss entry, seed) pair is a **cell**:

- ``kind: train`` cells are ordinary ``matcard.train`` runs (crystal GNNs or the composition MLP)
  that share everything but the loss. The seed drives the split, the initialisation and the
  sampling, so every loss of one seed is trained and tested on exactly the same items (checked: the
  test ids of every cell are compared with the baseline's). Checkpoints are selected on validation
  macro-F1; the test split is used once.
- ``kind: synthetic`` cells are the reference synthetic experiment (methods brief §2: MLP 20-32-10,
  plain SGD, batch 32) under its validation-selected protocol: the epoch with the best validation
  macro-F1 is selected, its test predictions are reported.

Each finished cell leaves ``cell.json`` (written last, atomically) in its folder
``cells/<label>/seed<seed>-<key>``; ``key`` hashes the cell's resolved settings, so a rerun skips
finished cells, resumes interrupted training runs from their last checkpoint, and a changed
setting gets a new cell instead of silently reusing an old one.

Reported per loss: macro-F1, balanced accuracy, minority-class recall, macro PR-AUC and ECE, mean ±
std over seeds; and the paired difference of macro-F1 and minority recall against the baseline
(cross-entropy) on the same seeds, with a percentile bootstrap confidence interval that resamples
both the seeds and the test items (the same resampled items for both losses: a paired bootstrap).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from matcard._version import __version__
from matcard.errors import ConfigError, MatcardError, UsageError
from matcard.fileio import atomic_path, atomic_write_json, atomic_write_text

CELL_FILE = "cell.json"
TABLE_METRICS: tuple[str, ...] = ("macro_f1", "balanced_accuracy", "minority_recall", "pr_auc_macro", "ece")
PAIRED_METRICS: tuple[str, ...] = ("macro_f1", "minority_recall")
METRIC_TITLES = {
    "macro_f1": "macro-F1",
    "balanced_accuracy": "balanced accuracy",
    "minority_recall": "minority recall",
    "pr_auc_macro": "PR-AUC (macro)",
    "ece": "ECE",
}
LOWER_IS_BETTER = {"ece"}
# what a synthetic cell may change besides the loss (the reference's own settings otherwise)
SYNTHETIC_SETTINGS = ("optimizer", "lr", "epochs", "variant")
# train-config fields a loss entry may not override: they define the shared split and the cell
FORBIDDEN_OVERRIDES = ("data", "trainer.seed", "out", "loss")
# SyntheticConfig fields a cell sets itself (one seed, one loss, the validation-selected protocol)
_PER_CELL_SYNTHETIC_FIELDS = ("seeds", "losses", "protocols")
# settings that do not change what a cell computes (left out of its key)
_UNKEYED = ("out", "trainer.threads", "trainer.num_workers", "trainer.accelerator", "trainer.devices")
STANDARD = "standard"  # in a study's loss list: every entry of STANDARD_ENTRIES
# The comparison every study runs (configs/benchmarks/ list it explicitly, with per-study settings):
# the baselines of methods brief §3-5 and the cardinality losses in their three modes.
STANDARD_ENTRIES: list[dict[str, Any]] = [
    {"label": "ce", "loss": "ce", "note": "cross-entropy (the baseline)"},
    {"label": "weighted_ce", "loss": "weighted_ce", "note": "inverse-frequency class weights"},
    {"label": "focal", "loss": "focal", "note": "gamma 2"},
    {"label": "class_balanced", "loss": "class_balanced", "note": "Cui 2019, beta 0.9999, CE"},
    {"label": "ldam_drw", "loss": "ldam", "params": {"s": 1.0}, "note": "LDAM + deferred re-weighting"},
    {"label": "logit_adjusted", "loss": "logit_adjusted", "note": "tau 1"},
    {"label": "balanced_softmax", "loss": "balanced_softmax", "note": "Ren 2020"},
    {"label": "seesaw", "loss": "seesaw", "note": "p 0.8, q 2"},
    {"label": "equalization", "loss": "equalization", "note": "Tan 2020"},
    {"label": "inverse_view", "loss": "inverse_view", "note": "EMA class losses"},
    {"label": "ot_reweight", "loss": "ot_reweight", "note": "POT Sinkhorn, balanced meta set"},
    {"label": "magnitude", "loss": "magnitude", "note": "replace (the reference), t = 1"},
    {
        "label": "magnitude_multiply",
        "loss": "magnitude",
        "params": {"mode": "multiply"},
        "note": "CE x magnitude",
    },
    {
        "label": "magnitude_add",
        "loss": "magnitude",
        "params": {"mode": "add"},
        "note": "CE + (magnitude - 1), lam 1",
    },
    {
        "label": "magnitude_add_lam0.1",
        "loss": "magnitude",
        "params": {"mode": "add", "lam": 0.1},
        "note": "CE + 0.1 (magnitude - 1)",
    },
    {"label": "spread", "loss": "spread", "note": "replace, t = 1"},
]
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LossEntry(_Section):
    """One row of the comparison: a registered loss with parameters and optional setting changes."""

    label: str = Field(description="row name in the tables (letters, digits, _ . + -)")
    loss: str = Field(description="registered loss name (matcard.losses.LOSSES)")
    params: dict[str, Any] = Field(default_factory=dict, description="loss parameters")
    set: dict[str, Any] = Field(
        default_factory=dict,
        description="train studies: dotted TrainConfig overrides (optim.lr, trainer.epochs, "
        "sampler.name, ...); synthetic studies: optimizer, lr, epochs, variant",
    )
    note: str = Field("", description="one line on what this entry is (kept in summary.csv / results.json)")

    @field_validator("label")
    @classmethod
    def _label_is_a_name(cls, label: str) -> str:
        if not _LABEL.match(label):
            raise ValueError(f"{label!r}: use letters, digits and _ . + - (it names a folder)")
        return label


class BootstrapConfig(_Section):
    samples: int = Field(2000, ge=100, le=100_000, description="bootstrap replicates")
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    seed: int = Field(0, ge=0)


class BenchmarkConfig(_Section):
    """A study: one task, many losses, several seeds."""

    name: str = Field(description="study name (default output folder runs/benchmarks/<name>)")
    kind: Literal["train", "synthetic"] = "train"
    description: str = ""
    train: dict[str, Any] = Field(
        default_factory=dict, description="TrainConfig sections shared by every cell (kind: train)"
    )
    synthetic: dict[str, Any] = Field(
        default_factory=dict, description="SyntheticConfig fields (kind: synthetic), e.g. majority"
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    losses: list[LossEntry] = Field(
        min_length=1, description="entries, loss names, or 'standard' (every STANDARD_ENTRIES row)"
    )
    baseline: str = Field("ce", description="label of the entry that paired differences refer to")
    minority: Literal["rarest", "non_majority"] | list[str] = Field(
        "rarest",
        description="minority-recall classes: the rarest training class, every class but the "
        "largest, or a list of class names",
    )
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)
    workers: int = Field(2, ge=1, le=256, description="cells trained at once (processes)")
    threads: int = Field(1, ge=1, le=256, description="torch CPU threads per cell")

    @field_validator("losses", mode="before")
    @classmethod
    def _names_are_entries(cls, entries: Any) -> Any:
        """A string is a registered loss (label = name); ``standard`` is STANDARD_ENTRIES."""
        if not isinstance(entries, list):
            return entries
        expanded: list[Any] = []
        for entry in entries:
            if entry == STANDARD:
                expanded.extend(dict(e) for e in STANDARD_ENTRIES)
            elif isinstance(entry, str):
                expanded.append({"label": entry, "loss": entry})
            else:
                expanded.append(entry)
        return expanded

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"seeds must be distinct and >= 0, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _consistent(self) -> BenchmarkConfig:
        labels = [entry.label for entry in self.losses]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"losses: labels must be unique, repeated: {repeated}")
        if self.baseline not in labels:
            raise ValueError(f"baseline: {self.baseline!r} is not the label of a loss entry {labels}")
        return self


def load_benchmark_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> BenchmarkConfig:
    """A validated study from a YAML file and/or a dict of top-level overrides (None values ignored).

    Every cell's training settings are checked too, so a bad value fails before any work, naming
    the entry and the field."""
    from matcard.config import read_yaml

    tree: dict[str, Any] = read_yaml(path) if path is not None else {}
    tree.update({key: value for key, value in (overrides or {}).items() if value is not None})
    return _validated(tree, f" in {path}" if path is not None else "")


def _validated(tree: dict[str, Any], origin: str) -> BenchmarkConfig:
    from matcard.config import format_validation_error

    try:
        config = BenchmarkConfig.model_validate(tree)
    except ValidationError as error:
        raise format_validation_error(error, origin) from None
    try:
        plan_cells(config, Path("."))
    except ConfigError as error:
        raise ConfigError(f"{error}{origin}") from None
    return config


def study_from_options(
    path: str | Path | None = None,
    *,
    dataset: str | None = None,
    task: str | None = None,
    model: str | None = None,
    losses: str | None = None,
    seeds: str | None = None,
    epochs: int | None = None,
    limit: int | None = None,
    baseline: str | None = None,
    assignments: Sequence[tuple[str, Any]] = (),
) -> BenchmarkConfig:
    """The study ``matcard benchmark`` runs: a YAML study with command-line changes, or an ad-hoc
    one (``dataset`` + ``losses``, default: the standard comparison against CE).

    With a study file, ``losses`` selects entries by label; without, it lists the losses to compare
    (``ce,focal,magnitude:mode=add``; ce is added as the baseline). ``seeds`` is a count (the
    study's first seed and the next ones) or a list (``0,1,2``, ``0-2``). ``dataset``, ``task``,
    ``model``, ``epochs``, ``limit`` and ``assignments`` (dotted TrainConfig paths) change the
    settings shared by every cell; ``baseline`` names the entry the paired differences refer to.
    """
    from matcard.config import read_yaml, set_dotted

    tree: dict[str, Any] = read_yaml(path) if path is not None else {}
    origin = f" in {path}" if path is not None else ""
    if tree.get("kind", "train") == "synthetic":
        if dataset or task or model or limit or assignments:
            raise UsageError("a synthetic study takes no --dataset, --task, --model, --limit or --set")
        if epochs is not None:
            tree.setdefault("synthetic", {})["epochs"] = epochs
    else:
        shared = {
            "data.dataset": dataset,
            "data.task": task,
            "model.name": model,
            "data.limit": limit,
            "trainer.epochs": epochs,
            **dict(assignments),
        }
        train = tree.setdefault("train", {})
        if not isinstance(train, dict):
            raise ConfigError(f"train: a mapping of TrainConfig sections{origin}")
        for key, value in shared.items():
            if value is not None:
                set_dotted(train, key, value)
    if path is None:
        if not dataset:
            raise UsageError("give a study file (--config), or --dataset (with --task, --model, --losses)")
        tree["name"] = "-".join([dataset, task or "default", model or "cgcnn"]).replace("/", "_")
        entries = parse_loss_list(losses) if losses is not None else [STANDARD]
        if losses is not None and not any(e["label"] == "ce" for e in entries):
            entries.insert(0, {"label": "ce", "loss": "ce"})
        tree["losses"] = entries
    if seeds is not None:
        first = (tree.get("seeds") or [0])[0]
        tree["seeds"] = parse_seed_option(seeds, first)
    if baseline is not None:
        tree["baseline"] = baseline
    study = _validated(tree, origin)
    if losses is not None and path is not None:
        study = select_losses(study, [name.strip() for name in losses.split(",") if name.strip()])
    return study


def parse_seed_option(text: str, first: int = 0) -> list[int]:
    """``3`` -> three seeds from ``first``; ``0,1,2`` or ``0-2`` -> those seeds."""
    text = text.strip()
    try:
        if text.isdigit() and int(text) <= 100:
            return list(range(first, first + int(text)))
        seeds: list[int] = []
        for part in (p.strip() for p in text.split(",") if p.strip()):
            low, sep, high = part.partition("-")
            seeds.extend(range(int(low), int(high) + 1) if sep else [int(part)])
    except ValueError:
        raise UsageError(f"--seeds: a count (3) or seeds (0,1,2 or 0-2), got {text!r}") from None
    if not seeds:
        raise UsageError("--seeds: no seed given")
    return seeds


def select_losses(config: BenchmarkConfig, labels: Sequence[str]) -> BenchmarkConfig:
    """The study restricted to the entries ``labels`` (the baseline is always kept)."""
    known = [entry.label for entry in config.losses]
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise UsageError(f"--losses: the study {config.name!r} has no entry {unknown}; its labels: {known}")
    keep = set(labels) | {config.baseline}  # the baseline is always run
    return config.model_copy(update={"losses": [e for e in config.losses if e.label in keep]})


def parse_loss_list(text: str) -> list[dict[str, Any]]:
    """``"ce,focal,magnitude:mode=add:t=0.5"`` -> loss entries (label ``magnitude-mode-add-t-0.5``)."""
    import yaml

    entries = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, *assignments = item.split(":")
        params: dict[str, Any] = {}
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            if not sep or not key:
                raise ConfigError(f"--losses: {item!r}: parameters are written name:key=value")
            params[key] = yaml.safe_load(raw)
        label = re.sub(r"[^A-Za-z0-9_.+-]", "-", "-".join([name, *assignments]))
        entries.append({"label": label, "loss": name, "params": params})
    if not entries:
        raise ConfigError("--losses: no loss given")
    return entries


# ---------------------------------------------------------------------------------------------
# cells
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    label: str
    seed: int
    key: str
    directory: Path
    kind: str
    settings: dict[str, Any]  # train: the full TrainConfig tree; synthetic: SyntheticConfig + options


def _entry_train_config(config: BenchmarkConfig, entry: LossEntry, seed: int, threads: int) -> Any:
    from matcard.config import load_config
    from matcard.training import preflight

    for key in entry.set:
        if any(key == bad or key.startswith(f"{bad}.") for bad in FORBIDDEN_OVERRIDES):
            raise ConfigError(
                f"losses[{entry.label}].set.{key}: a loss entry cannot change the data, the seed, the "
                "output or the loss (use loss / params); every entry shares the same split"
            )
    overrides: dict[str, Any] = {
        "loss.name": entry.loss,
        "loss.params": entry.params,
        "trainer.seed": seed,
        "trainer.threads": threads,
        **entry.set,
    }
    try:
        train_config = load_config(base=config.train, overrides=overrides)
        preflight(train_config)
    except ConfigError as error:
        raise ConfigError(f"losses[{entry.label}]: {error}") from None
    return train_config


def _synthetic_settings(config: BenchmarkConfig, entry: LossEntry) -> dict[str, Any]:
    from dataclasses import asdict

    from matcard import reproduce
    from matcard.losses import build

    unknown = sorted(set(entry.set) - set(SYNTHETIC_SETTINGS))
    if unknown:
        raise ConfigError(
            f"losses[{entry.label}].set: unknown {unknown}; "
            f"a synthetic cell accepts {list(SYNTHETIC_SETTINGS)}"
        )
    allowed = set(reproduce.SyntheticConfig.__dataclass_fields__) - set(_PER_CELL_SYNTHETIC_FIELDS)
    unknown_fields = sorted(set(config.synthetic) - allowed)
    if unknown_fields:
        raise ConfigError(f"synthetic: unknown fields {unknown_fields}; allowed: {sorted(allowed)}")
    try:
        synthetic = reproduce.SyntheticConfig(**config.synthetic)
        synthetic.validate()
    except (TypeError, ValueError, UsageError) as error:
        raise ConfigError(f"synthetic: {error}") from None
    variant = entry.set.get("variant")
    if variant is not None and variant not in reproduce.VARIANTS:
        raise ConfigError(f"losses[{entry.label}].set.variant: one of {reproduce.VARIANTS}, got {variant!r}")
    optimizer = entry.set.get("optimizer", "sgd")
    if optimizer not in reproduce.OPTIMIZERS:
        raise ConfigError(
            f"losses[{entry.label}].set.optimizer: one of {reproduce.OPTIMIZERS}, got {optimizer!r}"
        )
    for name in ("lr", "epochs"):
        value = entry.set.get(name)
        if value is not None and not (isinstance(value, int | float) and value > 0):
            raise ConfigError(f"losses[{entry.label}].set.{name}: a positive number, got {value!r}")
    params = {**reproduce.SYNTHETIC_LOSS_PARAMS.get(entry.loss, {}), **entry.params}
    try:
        build(entry.loss, [10] * synthetic.n_classes, **params)
    except ConfigError as error:
        raise ConfigError(f"losses[{entry.label}]: {error}") from None
    fields = asdict(synthetic)
    for reserved in _PER_CELL_SYNTHETIC_FIELDS:
        fields.pop(reserved)
    # the effective settings (an entry's own lr / epochs replace the study's), so the cell key
    # changes exactly when what the cell computes changes
    for name in ("lr", "epochs"):
        if entry.set.get(name) is not None:
            fields[name] = entry.set[name]
    return {
        "synthetic": fields,
        "loss": entry.loss,
        "params": entry.params,
        "variant": variant,
        "optimizer": optimizer,
    }


def _key(kind: str, settings: dict[str, Any]) -> str:
    keyed = json.loads(json.dumps(settings, sort_keys=True, default=str))
    for dotted in _UNKEYED:
        node = keyed
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    payload = json.dumps({"kind": kind, "settings": keyed}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def plan_cells(config: BenchmarkConfig, out: Path, threads: int | None = None) -> list[Cell]:
    """Every (entry, seed) cell with its validated settings; fails naming the entry and field."""
    cells = []
    for entry in config.losses:
        for seed in config.seeds:
            if config.kind == "train":
                train_config = _entry_train_config(config, entry, seed, threads or config.threads)
                settings = train_config.model_dump(mode="json")
            else:
                settings = {**_synthetic_settings(config, entry), "seed": seed}
            key = _key(config.kind, settings)
            directory = out / "cells" / entry.label / f"seed{seed}-{key}"
            if config.kind == "train":
                settings["out"] = str(directory)
            cells.append(Cell(entry.label, seed, key, directory, config.kind, settings))
    return cells


def read_cell(cell: Cell) -> dict[str, Any] | None:
    """The finished cell's record, or None (missing, damaged, or of other settings)."""
    path = cell.directory / CELL_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("key") == cell.key else None


@dataclass
class _Trained:
    """What a trained cell hands to its record."""

    predictions: Any  # test rows of matcard.training.prediction_table
    data: dict[str, Any]  # dataset, task and split sizes
    train_class_counts: list[int]
    selected_epoch: int | None
    epochs_run: int | None
    val_macro_f1: float | None


def run_cell(cell: Cell) -> dict[str, Any]:
    """Train one cell (resuming an interrupted training run) and write its ``cell.json``."""
    import torch

    from matcard.metrics import classification_metrics

    started = time.perf_counter()
    torch.set_num_threads(int(cell.settings.get("trainer", {}).get("threads") or 1))
    trained = _train_cell(cell) if cell.kind == "train" else _synthetic_cell(cell)
    y, proba, class_names = prediction_arrays(trained.predictions)
    ids = "\n".join(map(str, trained.predictions["id"]))
    record = {
        "label": cell.label,
        "seed": cell.seed,
        "key": cell.key,
        "kind": cell.kind,
        "class_names": class_names,
        "data": trained.data,
        "train_class_counts": trained.train_class_counts,
        "n_test": len(y),
        "test_ids_sha256": hashlib.sha256(ids.encode()).hexdigest(),
        "selected_epoch": trained.selected_epoch,
        "epochs_run": trained.epochs_run,
        "val_macro_f1": trained.val_macro_f1,
        "test": classification_metrics(y, proba, class_names),
        "seconds": round(time.perf_counter() - started, 2),
        "matcard_version": __version__,
    }
    atomic_write_json(cell.directory / CELL_FILE, record)
    return record


def _train_cell(cell: Cell) -> _Trained:
    """A complete ``matcard.train`` run in the cell's folder (continued if one was interrupted)."""
    from matcard.training import read_predictions, train

    resume = (cell.directory / "config.yaml").is_file()
    result = train(cell.settings, resume=resume, progress=False)
    meta = result.metrics["meta"]
    return _Trained(
        predictions=read_predictions(cell.directory, "test"),
        data={key: meta.get(key) for key in ("dataset", "task", "n_train", "n_val", "n_test")},
        train_class_counts=list(meta["train_class_counts"]),
        selected_epoch=meta.get("best_epoch"),
        epochs_run=meta.get("epochs_run"),
        val_macro_f1=result.metrics["val"]["macro_f1"],
    )


def _synthetic_cell(cell: Cell) -> _Trained:
    """One validation-selected run of the reference synthetic experiment; writes its history and
    test predictions into the cell's folder."""
    import pandas as pd

    from matcard import reproduce
    from matcard.training import prediction_table

    settings = cell.settings
    synthetic = reproduce.SyntheticConfig(seeds=(cell.seed,), **settings["synthetic"])
    spec = settings["loss"] + (f"+{settings['variant']}" if settings["variant"] else "")
    run = reproduce.train_synthetic(
        synthetic, spec, cell.seed, "validation_selected", loss_params=settings["params"],
        optimizer=settings["optimizer"],
    )  # fmt: skip
    assert run.selected_proba is not None  # validation_selected always selects an epoch
    cell.directory.mkdir(parents=True, exist_ok=True)
    history = pd.DataFrame(run.records)
    atomic_write_text(cell.directory / "history.csv", history.to_csv(index=False))
    class_names = synthetic_class_names(synthetic.n_classes)
    ids = np.arange(len(run.test_labels))
    frame = prediction_table("test", ids, run.test_labels, run.selected_proba, class_names)
    with atomic_path(cell.directory / "predictions.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    data = reproduce.make_synthetic(synthetic, cell.seed)
    return _Trained(
        predictions=frame,
        data={
            "dataset": "synthetic",
            "task": f"{synthetic.n_classes} classes, majority {synthetic.majority:g}",
            "n_train": len(data["y_fit"]),
            "n_val": len(data["y_val"]),
            "n_test": len(data["y_test"]),
        },
        train_class_counts=np.bincount(data["y_fit"], minlength=synthetic.n_classes).tolist(),
        selected_epoch=run.selected_epoch,
        epochs_run=len(run.records),
        val_macro_f1=float(history["val_macro_f1"].max()),
    )


def synthetic_class_names(n_classes: int) -> list[str]:
    return [f"class_{c}" for c in range(n_classes)]


def prediction_arrays(frame: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels as indices, probabilities [N, C], class names) from a predictions table."""
    columns = [column for column in frame.columns if column.startswith("prob_")]
    class_names = [column[len("prob_") :] for column in columns]
    index = {name: k for k, name in enumerate(class_names)}
    y = frame["label"].map(index).to_numpy(dtype=np.int64)
    return y, frame[columns].to_numpy(dtype=np.float64), class_names


def _cell_predictions(cell: Cell) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    frame = pd.read_parquet(cell.directory / "predictions.parquet")
    y, proba, _ = prediction_arrays(frame[frame["split"] == "test"])
    return y, proba


# ---------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------


@dataclass
class BenchmarkResult:
    config: BenchmarkConfig
    out_dir: Path
    summary: list[dict[str, Any]]  # one row per loss entry
    per_seed: list[dict[str, Any]]  # one row per cell
    minority_classes: list[str]
    class_names: list[str]
    environment: dict[str, Any]
    data: dict[str, Any]  # dataset, task and split sizes (of the baseline's first seed)
    files: dict[str, Path] = field(default_factory=dict)
    elapsed_s: float = 0.0
    reused_cells: int = 0
    trained_cells: int = 0
    workers: int = 1  # cells trained at once in this run


# rough relative cost of a cell, to start the slowest first (better packing over the workers)
_COST = {"ot_reweight": 2.0, "magnitude": 1.5, "spread": 1.2}


def _cost(cell: Cell) -> float:
    settings = cell.settings
    if cell.kind == "train":
        loss = settings["loss"]["name"]
        epochs = settings["trainer"]["epochs"]
    else:
        loss = settings["loss"]
        epochs = settings["synthetic"]["epochs"]
    return _COST.get(loss, 1.0) * float(epochs)


def run_benchmark(
    config: BenchmarkConfig,
    out_dir: str | os.PathLike[str],
    *,
    workers: int | None = None,
    on_cell_done: Callable[[Cell, dict[str, Any], bool], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    output_suffix: str = "",
) -> BenchmarkResult:
    """Run (or resume) every cell, then summarise and write CSV, JSON, markdown and plots.

    ``output_suffix`` goes into the names of the summary files (``table-vs-ce_tuned.md``), so a
    comparison against another baseline does not replace the study's own tables.

    ``on_start(total, pending)`` is called once the plan is known; ``on_cell_done(cell, record,
    reused)`` after each finished (or reused) cell.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    cells = plan_cells(config, out)
    records: dict[tuple[str, int], dict[str, Any]] = {}
    pending: list[Cell] = []
    for cell in cells:
        record = read_cell(cell)
        if record is None:
            pending.append(cell)
        else:
            records[(cell.label, cell.seed)] = record
    if on_start:
        on_start(len(cells), len(pending))
    for cell in cells:
        if (cell.label, cell.seed) in records and on_cell_done:
            on_cell_done(cell, records[(cell.label, cell.seed)], True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "study.yaml", _config_yaml(config))

    pending.sort(key=lambda c: -_cost(c))
    n_workers = max(1, min(workers or config.workers, len(pending) or 1))
    if pending and config.kind == "train":
        class_names = _warm_caches(pending[0])
    else:
        class_names = synthetic_class_names(int(config.synthetic.get("n_classes", 10)))
    if isinstance(config.minority, list):  # fail before training, not after it
        choose_minority(config, class_names, np.ones(len(class_names)))

    def store(cell: Cell, record: dict[str, Any]) -> None:
        records[(cell.label, cell.seed)] = record
        if on_cell_done:
            on_cell_done(cell, record, False)

    if pending and n_workers == 1:
        for cell in pending:
            store(cell, run_cell(cell))
    elif pending:
        by_dir = {cell.directory: cell for cell in pending}
        pool = get_context("spawn").Pool(n_workers)
        try:
            for record_dir, record in pool.imap_unordered(_run_cell_star, pending):
                store(by_dir[record_dir], record)
            pool.close()
        except BaseException:
            pool.terminate()  # Ctrl-C or a failed cell: stop the others now; finished cells are kept
            raise
        finally:
            pool.join()

    result = summarise(config, cells, records, out)
    result.elapsed_s = time.perf_counter() - started
    result.reused_cells = len(cells) - len(pending)
    result.trained_cells = len(pending)
    result.workers = n_workers if pending else workers or config.workers
    result.files = write_outputs(result, cells, output_suffix)
    return result


def _run_cell_star(cell: Cell) -> tuple[Path, dict[str, Any]]:
    return cell.directory, run_cell(cell)


def _warm_caches(cell: Cell) -> list[str]:
    """Download, parse and featurize once, in this process, before the workers start (they then only
    read the caches instead of all building them at once); returns the task's class names."""
    from matcard.config import load_config
    from matcard.training import prepare_data

    return prepare_data(load_config(base=cell.settings), None, write=False, progress=True).class_names


def _config_yaml(config: BenchmarkConfig) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------


def _confusion(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(y * n_classes + predicted, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def _scores(matrix: np.ndarray, minority: np.ndarray) -> tuple[float, float]:
    """(macro-F1, minority recall) from a confusion matrix, with matcard.metrics' definitions:
    macro-F1 over classes present or predicted; recall averaged over the minority classes present."""
    true_positive = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    scored = (support > 0) | (predicted > 0)
    denominator = support + predicted
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    macro_f1 = float(f1[scored].mean()) if scored.any() else math.nan
    present = minority[support[minority] > 0]
    recall = float((true_positive[present] / support[present]).mean()) if present.size else math.nan
    return macro_f1, recall


def minority_recall(metrics: dict[str, Any], minority_classes: Sequence[str]) -> float | None:
    recalls = [metrics["per_class"][name]["recall"] for name in minority_classes]
    recalls = [value for value in recalls if value is not None]
    return float(np.mean(recalls)) if recalls else None


def choose_minority(config: BenchmarkConfig, class_names: list[str], train_counts: np.ndarray) -> list[str]:
    if isinstance(config.minority, list):
        unknown = sorted(set(config.minority) - set(class_names))
        if unknown:
            raise ConfigError(f"minority: unknown classes {unknown}; the task has {class_names}")
        return list(config.minority)
    if config.minority == "non_majority":
        largest = int(np.argmax(train_counts))
        return [name for k, name in enumerate(class_names) if k != largest]
    return [class_names[int(np.argmin(train_counts))]]


def paired_bootstrap(
    pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    n_classes: int,
    minority: np.ndarray,
    *,
    samples: int,
    confidence: float,
    seed: int,
) -> dict[str, tuple[float, float]]:
    """Percentile CIs of the paired difference (method - baseline) of macro-F1 and minority recall.

    ``pairs`` holds one (labels, method predictions, baseline predictions) triple per seed, on the
    same test items. Each replicate draws the seeds with replacement (when there are several) and,
    within each drawn seed, the test items with replacement: the same items for both predictions.
    """
    rng = np.random.default_rng(seed)
    n_seeds = len(pairs)
    differences = np.empty((samples, 2))
    for b in range(samples):
        chosen = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else np.zeros(1, dtype=int)
        total = np.zeros(2)
        counted = np.zeros(2)
        for s in chosen:
            y, method, baseline = pairs[s]
            index = rng.integers(0, len(y), len(y))
            a = _scores(_confusion(y[index], method[index], n_classes), minority)
            z = _scores(_confusion(y[index], baseline[index], n_classes), minority)
            for m in range(2):
                if math.isfinite(a[m]) and math.isfinite(z[m]):
                    total[m] += a[m] - z[m]
                    counted[m] += 1
        differences[b] = np.divide(total, counted, out=np.full(2, np.nan), where=counted > 0)
    alpha = (1.0 - confidence) / 2.0
    intervals = {}
    for m, name in enumerate(PAIRED_METRICS):
        column = differences[:, m][np.isfinite(differences[:, m])]
        if column.size == 0:
            intervals[name] = (math.nan, math.nan)
        else:
            low, high = np.quantile(column, [alpha, 1.0 - alpha])
            intervals[name] = (float(low), float(high))
    return intervals


def summarise(
    config: BenchmarkConfig,
    cells: Sequence[Cell],
    records: dict[tuple[str, int], dict[str, Any]],
    out: Path,
) -> BenchmarkResult:
    """Per-seed rows, per-loss summary rows (mean ± std, paired differences with bootstrap CIs)."""
    baseline_records = [records[(config.baseline, s)] for s in config.seeds]
    class_names = list(baseline_records[0]["class_names"])
    counts = np.sum([r["train_class_counts"] for r in baseline_records], axis=0)
    minority = choose_minority(config, class_names, counts)
    minority_index = np.array([class_names.index(name) for name in minority])
    cell_of = {(cell.label, cell.seed): cell for cell in cells}

    per_seed: list[dict[str, Any]] = []
    for entry in config.losses:
        for seed in config.seeds:
            record = records[(entry.label, seed)]
            if record["class_names"] != class_names:
                raise MatcardError(f"{entry.label} seed {seed}: classes differ from the baseline's")
            baseline = records[(config.baseline, seed)]
            if record["test_ids_sha256"] != baseline["test_ids_sha256"]:
                raise MatcardError(
                    f"{entry.label} seed {seed} was tested on other items than {config.baseline} "
                    f"seed {seed}: the split must be the same for every loss of a seed"
                )
            test = record["test"]
            row: dict[str, Any] = {"loss": entry.label, "seed": seed}
            for metric in TABLE_METRICS:
                row[metric] = minority_recall(test, minority) if metric == "minority_recall" else test[metric]
            row.update(
                accuracy=test["accuracy"],
                mcc=test["mcc"],
                roc_auc_macro=test["roc_auc_macro"],
                val_macro_f1=record["val_macro_f1"],
                selected_epoch=record["selected_epoch"],
                epochs_run=record["epochs_run"],
                n_test=record["n_test"],
                seconds=record["seconds"],
            )
            row.update({f"recall_{name}": test["per_class"][name]["recall"] for name in class_names})
            per_seed.append(row)

    baseline_predictions = {s: _cell_predictions(cell_of[(config.baseline, s)]) for s in config.seeds}
    baseline_rows = {r["seed"]: r for r in per_seed if r["loss"] == config.baseline}
    summary: list[dict[str, Any]] = []
    for entry in config.losses:
        rows = [r for r in per_seed if r["loss"] == entry.label]
        row: dict[str, Any] = {"loss": entry.label, "name": entry.loss, "note": entry.note}
        for metric in (*TABLE_METRICS, "accuracy", "mcc", "roc_auc_macro", "seconds"):
            values = np.array([r[metric] for r in rows if r[metric] is not None], dtype=np.float64)
            row[metric] = float(values.mean()) if values.size else None
            row[f"{metric}_std"] = float(values.std(ddof=1)) if values.size > 1 else None
        for name in class_names:
            values = [r[f"recall_{name}"] for r in rows if r[f"recall_{name}"] is not None]
            row[f"recall_{name}"] = float(np.mean(values)) if values else None
        row["n_seeds"] = len(rows)
        intervals = {name: (0.0, 0.0) for name in PAIRED_METRICS}
        if entry.label != config.baseline:
            pairs = []
            for seed in config.seeds:
                y, proba = _cell_predictions(cell_of[(entry.label, seed)])
                _, proba_base = baseline_predictions[seed]
                pairs.append((y, proba.argmax(axis=1), proba_base.argmax(axis=1)))
            intervals = paired_bootstrap(
                pairs,
                len(class_names),
                minority_index,
                samples=config.bootstrap.samples,
                confidence=config.bootstrap.confidence,
                seed=config.bootstrap.seed,
            )
        for metric in PAIRED_METRICS:
            differences = [
                r[metric] - baseline_rows[r["seed"]][metric]
                for r in rows
                if r[metric] is not None and baseline_rows[r["seed"]][metric] is not None
            ]
            row[f"{metric}_vs_baseline"] = float(np.mean(differences)) if differences else None
            low, high = intervals[metric]
            row[f"{metric}_vs_baseline_ci"] = [low, high]
        summary.append(row)
    return BenchmarkResult(
        config=config,
        out_dir=out,
        summary=summary,
        per_seed=per_seed,
        minority_classes=minority,
        class_names=class_names,
        environment=environment(),
        data=dict(baseline_records[0].get("data") or {}),
    )


def environment() -> dict[str, Any]:
    """Hardware and versions, stated beside every table."""
    import importlib.metadata as metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("torch", "torch-geometric", "lightning", "pymatgen", "matminer", "scikit-learn", "pot"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": _gpu_name(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "matcard": __version__,
        "versions": versions,
    }


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # no usable CUDA: report none
        return None


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------


def _fmt(value: float | None, std: float | None = None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}" if std is None else f"{value:.{digits}f} ± {std:.{digits}f}"


def _fmt_paired(row: dict[str, Any], metric: str, baseline: str) -> str:
    if row["loss"] == baseline:
        return "(baseline)"
    value = row.get(f"{metric}_vs_baseline")
    low, high = row[f"{metric}_vs_baseline_ci"]
    if value is None or not math.isfinite(low):
        return "n/a"
    return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"


def study_description(result: BenchmarkResult) -> list[str]:
    """Dataset, split, seeds, model and hardware, as lines (the header of every table)."""
    config = result.config
    env = result.environment
    data = result.data
    sizes = f"{data.get('n_train')} / {data.get('n_val')} / {data.get('n_test')} train / val / test items"
    lines = []
    if config.kind == "train":
        from matcard.config import load_config

        train = load_config(base=config.train)
        data_cfg = train.data
        if data_cfg.split == "given":
            split = "the published split (test = its held-out file), val carved from the rest by seed"
        else:
            split = (
                f"stratified {1 - data_cfg.val_fraction - data_cfg.test_fraction:.2f} / "
                f"{data_cfg.val_fraction:.2f} / {data_cfg.test_fraction:.2f}, drawn per seed"
            )
        if data_cfg.group_by_formula:
            split += ", grouped by reduced formula"
        if data_cfg.limit:
            split += f", from a stratified subsample of {data_cfg.limit}"
        lines.append(f"dataset: {data.get('dataset')}, task `{data.get('task')}`; split: {split} ({sizes})")
        optim, trainer = train.optim, train.trainer
        params = f" {train.model.params}" if train.model.params else ""
        lines.append(
            f"model: {train.model.name}{params}, featurizer {train.featurizer_kind()}; {optim.optimizer} lr "
            f"{optim.lr:g} ({optim.schedule} schedule), up to {trainer.epochs} epochs, batch "
            f"{trainer.batch_size}, early stopping patience {trainer.patience}; checkpoint selected on val "
            "macro-F1, test used once"
        )
    else:
        majority = config.synthetic.get("majority", 0.5)
        epochs = config.synthetic.get("epochs", 100)
        lines.append(
            "dataset: synthetic make_classification (methods brief §2), 10 classes, majority "
            f"{majority:g}; split: 70 / 30 train / test, val = stratified 15 % of train ({sizes})"
        )
        lines.append(
            f"model: MLP 20-32-10, plain SGD lr 0.01, batch 32, {epochs} epochs (unless the entry says "
            "otherwise); the epoch with the best val macro-F1 is reported on test"
        )
    seeds = ", ".join(str(s) for s in config.seeds)
    lines.append(
        f"seeds: {seeds}; minority class(es): {', '.join(result.minority_classes)}; CI: "
        f"{config.bootstrap.confidence:.0%} paired bootstrap over seeds and test items "
        f"({config.bootstrap.samples} replicates)"
    )
    gpu = f", GPU {env['gpu']}" if env.get("gpu") else ", no GPU"
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines.append(
        f"hardware: {env['cpu']}, {env['cores']} cores{gpu}; {result.workers} cells at a time, "
        f"{config.threads} thread(s) each; matcard {env['matcard']}, {versions}"
    )
    return lines


def _table_rows(result: BenchmarkResult) -> tuple[list[str], list[list[str]], dict[str, float]]:
    """Header and text cells shared by the markdown and the Rich table; best mean per metric."""
    config = result.config
    minority = ", ".join(result.minority_classes)
    if len(result.minority_classes) > 3:
        minority = f"{len(result.minority_classes)} classes"
    header = [
        "loss",
        "macro-F1",
        "balanced acc.",
        f"minority recall ({minority})",
        "PR-AUC (macro)",
        "ECE",
        f"Δ macro-F1 vs {config.baseline} [CI]",
        f"Δ minority recall vs {config.baseline} [CI]",
        "s / cell",
    ]
    best = {}
    for metric in TABLE_METRICS:
        values = [row[metric] for row in result.summary if row[metric] is not None]
        if values:
            best[metric] = min(values) if metric in LOWER_IS_BETTER else max(values)
    rows = []
    for row in result.summary:
        cells = [row["loss"]]
        cells.extend(_fmt(row[metric], row[f"{metric}_std"]) for metric in TABLE_METRICS)
        cells.extend(_fmt_paired(row, metric, config.baseline) for metric in PAIRED_METRICS)
        cells.append(_fmt(row["seconds"], digits=0))
        rows.append(cells)
    return header, rows, best


def _is_best(row: dict[str, Any], metric: str, best: dict[str, float]) -> bool:
    return row[metric] is not None and metric in best and abs(row[metric] - best[metric]) < 1e-12


def markdown_table(result: BenchmarkResult) -> str:
    """The study's table in markdown; the best mean of each metric in bold."""
    header, rows, best = _table_rows(result)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row, cells in zip(result.summary, rows, strict=True):
        cells = [f"`{cells[0]}`", *cells[1:]]
        for column, metric in enumerate(TABLE_METRICS, start=1):
            if _is_best(row, metric, best):
                cells[column] = f"**{cells[column]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rich_table(result: BenchmarkResult) -> Any:
    """The same table for the terminal."""
    from rich.table import Table

    header, rows, best = _table_rows(result)
    table = Table(
        title=f"{result.config.name}: test metrics, mean ± std over {len(result.config.seeds)} seeds"
    )
    for index, name in enumerate(header):
        table.add_column(name, justify="left" if index == 0 else "right")
    for row, cells in zip(result.summary, rows, strict=True):
        for column, metric in enumerate(TABLE_METRICS, start=1):
            if _is_best(row, metric, best):
                cells[column] = f"[bold]{cells[column]}[/]"
        table.add_row(*cells)
    return table


def write_outputs(result: BenchmarkResult, cells: Sequence[Cell], suffix: str = "") -> dict[str, Path]:
    """summary.csv, per_seed.csv, results.json, table.md and the plots (all atomic; ``suffix`` is
    added to each name)."""
    import pandas as pd

    out = result.out_dir
    names = {
        "summary": "summary.csv",
        "per_seed": "per_seed.csv",
        "json": "results.json",
        "table": "table.md",
        "metrics_plot": "metrics.png",
        "recall_plot": "per_class_recall.png",
        "paired_plot": "paired_vs_baseline.png",
    }
    files = {key: out / f"{Path(name).stem}{suffix}{Path(name).suffix}" for key, name in names.items()}
    summary = pd.DataFrame(result.summary)
    for metric in PAIRED_METRICS:
        column = f"{metric}_vs_baseline_ci"
        summary[f"{metric}_vs_baseline_low"] = [ci[0] for ci in summary[column]]
        summary[f"{metric}_vs_baseline_high"] = [ci[1] for ci in summary[column]]
        summary = summary.drop(columns=column)
    atomic_write_text(files["summary"], summary.to_csv(index=False))
    atomic_write_text(files["per_seed"], pd.DataFrame(result.per_seed).to_csv(index=False))
    atomic_write_json(
        files["json"],
        {
            "study": result.config.model_dump(mode="json"),
            "description": study_description(result),
            "minority_classes": result.minority_classes,
            "class_names": result.class_names,
            "environment": result.environment,
            "summary": _json_safe(result.summary),
            "per_seed": _json_safe(result.per_seed),
            "cells": {f"{c.label}/seed{c.seed}": str(c.directory) for c in cells},
        },
    )
    title = f"## {result.config.name}\n\n" + "".join(f"- {line}\n" for line in study_description(result))
    atomic_write_text(files["table"], title + "\n" + markdown_table(result))
    plot_metrics(result, files["metrics_plot"])
    plot_recall_heatmap(result, files["recall_plot"])
    plot_paired(result, files["paired_plot"])
    return files


def _json_safe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return [{k: clean(v) for k, v in row.items()} for row in rows]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> None:
    """Lay out, write atomically, and free the figure."""
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    _pyplot().close(figure)


def plot_metrics(result: BenchmarkResult, path: Path) -> None:
    """One panel per table metric: a bar per loss, error bars = std over seeds."""
    plt = _pyplot()
    labels = [row["loss"] for row in result.summary]
    positions = np.arange(len(labels))
    figure, axes = plt.subplots(
        1, len(TABLE_METRICS), figsize=(3.2 * len(TABLE_METRICS), 0.32 * len(labels) + 1.6)
    )
    for axis, metric in zip(np.atleast_1d(axes), TABLE_METRICS, strict=True):
        means = np.array([np.nan if r[metric] is None else r[metric] for r in result.summary])
        stds = np.array([r[f"{metric}_std"] or 0.0 for r in result.summary])
        colours = ["tab:orange" if label == result.config.baseline else "tab:blue" for label in labels]
        colours = [
            "tab:green" if r["name"] in ("magnitude", "spread") and r["loss"] != result.config.baseline else c
            for r, c in zip(result.summary, colours, strict=True)
        ]
        axis.barh(positions, np.nan_to_num(means), xerr=stds, color=colours, alpha=0.85, capsize=2)
        baseline = next(r[metric] for r in result.summary if r["loss"] == result.config.baseline)
        if baseline is not None:
            axis.axvline(baseline, color="tab:orange", linestyle="--", linewidth=1)
        axis.set_title(METRIC_TITLES[metric] + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
        axis.set_yticks(positions, labels if axis is np.atleast_1d(axes)[0] else [""] * len(labels))
        axis.invert_yaxis()
        axis.grid(axis="x", alpha=0.3)
    figure.suptitle(f"{result.config.name}: test metrics, mean ± std over seeds {result.config.seeds}")
    _save(figure, path)


def plot_recall_heatmap(result: BenchmarkResult, path: Path) -> None:
    """Per-class test recall (mean over seeds): losses x classes."""
    plt = _pyplot()
    labels = [row["loss"] for row in result.summary]
    matrix = np.array(
        [
            [
                np.nan if row[f"recall_{name}"] is None else row[f"recall_{name}"]
                for name in result.class_names
            ]
            for row in result.summary
        ]
    )
    figure, axis = plt.subplots(
        figsize=(max(5.0, 0.9 * len(result.class_names) + 2.5), 0.34 * len(labels) + 1.8)
    )
    image = axis.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    axis.set_xticks(np.arange(len(result.class_names)), result.class_names, rotation=40, ha="right")
    axis.set_yticks(np.arange(len(labels)), labels)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if np.isfinite(matrix[i, j]):
                axis.text(
                    j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] < 0.55 else "black",
                )  # fmt: skip
    figure.colorbar(image, ax=axis, label="test recall (mean over seeds)")
    axis.set_title(f"{result.config.name}: per-class recall")
    _save(figure, path)


def plot_paired(result: BenchmarkResult, path: Path) -> None:
    """Paired differences against the baseline with their bootstrap CIs (one panel per metric)."""
    plt = _pyplot()
    rows = [row for row in result.summary if row["loss"] != result.config.baseline]
    if not rows:
        return
    labels = [row["loss"] for row in rows]
    positions = np.arange(len(rows))
    figure, axes = plt.subplots(1, len(PAIRED_METRICS), figsize=(10, 0.32 * len(rows) + 1.6), sharey=True)
    for axis, metric in zip(np.atleast_1d(axes), PAIRED_METRICS, strict=True):
        values = np.array(
            [np.nan if r[f"{metric}_vs_baseline"] is None else r[f"{metric}_vs_baseline"] for r in rows]
        )
        lows = np.array([r[f"{metric}_vs_baseline_ci"][0] for r in rows])
        highs = np.array([r[f"{metric}_vs_baseline_ci"][1] for r in rows])
        errors = np.nan_to_num(np.vstack([values - lows, highs - values]).clip(min=0))
        colours = [
            "tab:green" if low > 0 else "tab:red" if high < 0 else "tab:gray"
            for low, high in zip(lows, highs, strict=True)
        ]
        for position, value, error, colour in zip(positions, values, errors.T, colours, strict=True):
            axis.errorbar(value, position, xerr=error.reshape(2, 1), fmt="none", ecolor=colour, capsize=3)
        axis.scatter(values, positions, color=colours, zorder=3)
        axis.axvline(0.0, color="black", linewidth=0.8)
        axis.set_yticks(positions, labels)
        axis.grid(axis="x", alpha=0.3)
        axis.set_title(f"Δ {METRIC_TITLES[metric]} vs {result.config.baseline}")
    np.atleast_1d(axes)[0].invert_yaxis()  # the panels share the y axis: invert it once
    figure.suptitle(
        f"{result.config.name}: paired differences, {result.config.bootstrap.confidence:.0%} bootstrap CI"
    )
    _save(figure, path)


def summary_for_json(result: BenchmarkResult) -> list[dict[str, Any]]:
    """The ``--json`` rows: the table's columns per loss."""
    keys = ["loss", "name"]
    for metric in TABLE_METRICS:
        keys += [metric, f"{metric}_std"]
    for metric in PAIRED_METRICS:
        keys += [f"{metric}_vs_baseline", f"{metric}_vs_baseline_ci"]
    keys += ["n_seeds", "seconds"]
    return _json_safe([{key: row.get(key) for key in keys} for row in result.summary])


__all__ = [
    "BenchmarkConfig",
    "BenchmarkResult",
    "Cell",
    "LossEntry",
    "load_benchmark_config",
    "paired_bootstrap",
    "parse_loss_list",
    "plan_cells",
    "run_benchmark",
    "run_cell",
    "summarise",
]
