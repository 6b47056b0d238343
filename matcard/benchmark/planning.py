"""Planning: a validated study (file + command-line changes) -> its cells with resolved settings."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from matcard.benchmark.schema import (
    _PER_CELL_SYNTHETIC_FIELDS,
    _UNKEYED,
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
