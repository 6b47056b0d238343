"""Planning: a validated study (file + command-line changes) -> its cells with resolved settings."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from matcard.benchmark.schema import (
    _PER_CELL_SYNTHETIC_FIELDS,
    _UNKEYED,
    CELL_FILE,
    FORBIDDEN_OVERRIDES,
    STANDARD,
    SYNTHETIC_SETTINGS,
    BenchmarkConfig,
    LossEntry,
    parse_loss_list,
    parse_seed_option,
    select_losses,
)
from matcard.errors import ConfigError, UsageError


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


def _validated(tree: dict[str, Any], origin: str, select: Sequence[str] | None = None) -> BenchmarkConfig:
    """The schema, then (on the entries ``select`` keeps) every cell's settings."""
    from matcard.config import format_validation_error

    try:
        config = BenchmarkConfig.model_validate(tree)
    except ValidationError as error:
        raise format_validation_error(error, origin) from None
    if select is not None:
        config = select_losses(config, select)
    try:
        plan_cells(config, Path("."), resolve_controls=False)
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
    # a study file's --losses selects before the cells are checked, so a subset runs even when
    # another entry needs a loss this installation lacks
    select = [name.strip() for name in losses.split(",") if name.strip()] if losses and path else None
    return _validated(tree, origin, select)


@dataclass(frozen=True)
class Cell:
    label: str
    seed: int
    key: str
    directory: Path
    kind: str
    settings: dict[str, Any]  # train: the full TrainConfig tree; synthetic: SyntheticConfig + options
    waits_for: str | None = None  # a control whose weights are not known yet: the entry it waits for


PENDING = "pending"  # the key of a control cell whose entry's cell has not finished


def read_cell(cell: Cell) -> dict[str, Any] | None:
    """The finished cell's record, or None (missing, damaged, of other settings, or pending)."""
    if cell.waits_for is not None:
        return None
    path = cell.directory / CELL_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("key") == cell.key else None


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
    if kind == "train" and isinstance(keyed.get("loss"), dict):
        loss = keyed["loss"]
        loss["params"] = _default_mode_keyed(loss.get("name"), loss.get("params") or {})
    elif isinstance(keyed.get("loss"), str):
        keyed["params"] = _default_mode_keyed(keyed["loss"], keyed.get("params") or {})
    payload = json.dumps({"kind": kind, "settings": keyed}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


# the default scale of mode "weight" when keys without ``t`` were made
_WEIGHT_T_OF_OLD_KEYS = 20.0


def _default_mode_keyed(name: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Cardinality-loss params with the default ``mode`` (and, in mode weight, the default ``t``)
    written in when it is not what the key used to mean (replace for errors, divide for embeddings;
    t 20): a cell computed under an older default is then never reused for a newer one, while every
    key made so far stays what it was."""
    if name not in ("magnitude", "spread"):
        return params
    from matcard.losses import build

    try:
        loss = build(name, [10, 10], **params)
    except ConfigError:
        return params  # the cell's own validation reports it
    mode = getattr(loss, "mode", None)
    legacy = "replace" if params.get("source", "errors") == "errors" else "divide"
    keyed = params if "mode" in params or mode in (None, legacy) else {**params, "mode": mode}
    if mode == "weight" and "t" not in params and getattr(loss, "t", None) != _WEIGHT_T_OF_OLD_KEYS:
        keyed = {**keyed, "t": loss.t}  # the weight mode's default scale changed since those keys
    return keyed


def plan_cells(
    config: BenchmarkConfig, out: Path, threads: int | None = None, *, resolve_controls: bool = True
) -> list[Cell]:
    """Every (entry, seed) cell with its validated settings; fails naming the entry and field.

    A control cell carries the realised class weights of its entry's cell of the same seed (read from
    that cell's record, so they are part of its key); until that cell has finished, or with
    ``resolve_controls=False``, it is planned with key ``pending``."""
    planned: dict[tuple[str, int], Cell] = {}
    # controls last: they read the finished cells of their entries
    for entry in sorted(config.losses, key=lambda e: e.control_for is not None):
        if entry.control_for is not None:
            _check_control_target(config, entry)
        for seed in config.seeds:
            if config.kind == "train":
                train_config = _entry_train_config(config, entry, seed, threads or config.threads)
                settings = train_config.model_dump(mode="json")
            else:
                settings = {**_synthetic_settings(config, entry), "seed": seed}
            waits_for = None
            if entry.control_for is not None:
                target = planned[(entry.control_for, seed)]
                weights = _control_weights(entry, target) if resolve_controls else None
                settings["loss"]["params"] = {"weights": weights}
                waits_for = entry.control_for if weights is None else None
            key = PENDING if waits_for else _key(config.kind, settings)
            directory = out / "cells" / entry.label / f"seed{seed}-{key}"
            if config.kind == "train":
                settings["out"] = str(directory)
            planned[(entry.label, seed)] = Cell(
                entry.label, seed, key, directory, config.kind, settings, waits_for
            )
    return [planned[(entry.label, seed)] for entry in config.losses for seed in config.seeds]


def _check_control_target(config: BenchmarkConfig, entry: LossEntry) -> None:
    """Before any work: the controlled entry's loss must report realised class weights."""
    from matcard.losses import build
    from matcard.losses.base import ImbalanceLoss

    target = next(e for e in config.losses if e.label == entry.control_for)
    try:
        loss = build(target.loss, [10, 10], **target.params)
    except ConfigError:
        return  # the target's own cells report the bad parameter, naming the target
    # every loss has the method; only those that apply class weights override the base's None
    method = getattr(type(loss), "realised_class_weights", None)
    if method is None or method is ImbalanceLoss.realised_class_weights:
        raise ConfigError(
            f"losses[{entry.label}].control_for: the loss of {target.label!r} ({target.loss}) reports no "
            "realised class weights, so there is nothing to match"
        )


def _control_weights(entry: LossEntry, target: Cell) -> list[float] | None:
    """The realised class weights of the finished ``target`` cell; None while it has not finished."""
    record = read_cell(target)
    if record is None:
        return None
    weights = (record.get("loss") or {}).get("realised_class_weights")
    n_classes = len(record.get("class_names") or [])
    valid = (
        isinstance(weights, list)
        and len(weights) == n_classes
        and all(isinstance(w, int | float) and math.isfinite(w) and w > 0 for w in weights)
    )
    if not valid:
        raise ConfigError(
            f"losses[{entry.label}].control_for: {target.label} seed {target.seed} recorded no usable "
            f"realised class weights ({weights!r}) in {target.directory / CELL_FILE}"
        )
    return [float(w) for w in weights]
