"""Training configuration: pydantic models loaded from YAML, with command-line overrides.

Every section forbids unknown keys, so a typo or a bad value fails before any work starts, with
the dotted path of the offending field in the message (``trainer.epochs: ...``). The defaults of
:class:`TrainConfig` *are* the embedded default run (``configs/default.yaml`` mirrors them): the
288 AFLOW prototypes shipped with pymatgen, crystal-system task, CGCNN, cross-entropy. So
``matcard train`` works from an installed wheel without any file.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from matcard.errors import ConfigError
from matcard.names import INPUT_FEATURIZERS, MODEL_INPUT_KINDS, check_loss_name, check_model_name


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    dataset: str = Field(
        "aflow-prototypes", description="registered dataset name or a path to structure files"
    )
    task: str | None = Field(
        None, description="label recipe or task spec; None: the dataset's default task (crystal_system here)"
    )
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    split: Literal["stratified", "given"] = Field(
        "stratified",
        description="given: the dataset's published split supplies test (its 'validation' or 'test' part), "
        "val is carved from the rest, stratified",
    )
    group_by_formula: bool = Field(
        False, description="keep polymorphs (same reduced formula) in one split to avoid leakage"
    )
    limit: int | None = Field(
        None, ge=10, description="stratified subsample of exactly this many items (quick runs)"
    )
    calibration_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=0.5,
        description="share of the data carved (stratified) from the training portion to calibrate the "
        "conformal sets; 0: calibrate them on val (no coverage guarantee)",
    )
    mirror: str | None = Field(None, description="download mirror (http:// or file:// base URL)")
    timeout: float = Field(
        10.0, gt=0.0, description="seconds to parse one structure file (grows with file size); path datasets"
    )


class FeaturizerConfig(_Section):
    kind: Literal["auto", "graph", "composition", "chgnet", "chgnet_graph"] = Field(
        "auto",
        description="auto: graph for crystal GNNs, composition for the MLP, chgnet_graph for "
        "chgnet_finetune; chgnet: frozen pretrained CHGNet features (vector models such as the MLP)",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="featurizer config fields (cutoff, ...)")
    workers: int = Field(1, ge=1, description="processes for featurization")
    cache: bool = Field(True, description="reuse features cached for the same dataset and featurizer")


class ModelConfig(_Section):
    name: str = "cgcnn"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        return check_model_name(name)  # a name list, not the registry: no torch import before this check

    @field_validator("params")
    @classmethod
    def _pretrained_checkpoint(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """chgnet_finetune's checkpoint is checked here (torch-free), so a typo fails at once."""
        if info.data.get("name") == "chgnet_finetune" and "model_version" in params:
            from matcard.featurize.chgnet import check_model_version

            try:
                check_model_version(str(params["model_version"]))
            except ConfigError as error:
                raise ValueError("model_version: " + str(error).split(": ", 1)[-1]) from None
        return params


class LossConfig(_Section):
    name: str = "ce"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_loss(cls, name: str) -> str:
        return check_loss_name(name)


class SamplerConfig(_Section):
    name: str = Field("none", description="none, or a sampler/resampler registered in matcard.losses")
    params: dict[str, Any] = Field(default_factory=dict)


class OptimConfig(_Section):
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(3e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD only")
    schedule: Literal["none", "cosine", "plateau", "step"] = "cosine"
    warmup_epochs: int = Field(0, ge=0, description="linear learning-rate warm-up")
    step_size: int = Field(30, ge=1, description="epochs between decays for schedule=step")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="decay factor for step / plateau")
    grad_clip: float | None = Field(5.0, gt=0.0, description="gradient-norm clipping; None: off")


class TrainerConfig(_Section):
    epochs: int = Field(60, ge=1, le=100_000)
    batch_size: int = Field(32, ge=2, le=65_536)
    patience: int | None = Field(20, ge=1, description="early stopping on val macro-F1; None: off")
    seed: int = Field(0, ge=0)
    deterministic: bool = True
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int = Field(1, ge=1, description="devices (processes) per node; > 1 trains with DDP")
    num_nodes: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_fork"] = Field(
        "auto", description="auto: single device, or DDP when devices * num_nodes > 1"
    )
    precision: Literal["32-true", "16-mixed", "bf16-mixed", "64-true"] = "32-true"
    num_workers: int = Field(0, ge=0, description="DataLoader workers")
    threads: int | None = Field(
        None, ge=1, le=256, description="CPU threads per process; None: the idle cores (see docs/training.md)"
    )
    eval_batch_size: int = Field(256, ge=1)


class DecisionConfig(_Section):
    """The post-hoc decision layer fitted after training (matcard.decision)."""

    enabled: bool = Field(True, description="fit temperature, decision rule and conformal sets")
    objective: str = Field(
        "macro_f1",
        description="macro_f1, balanced_accuracy, minority_f1, recall>=R[:class] or precision>=P[:class]",
    )
    alpha: float = Field(0.1, gt=0.0, lt=1.0, description="conformal miscoverage (sets cover 1 - alpha)")

    @field_validator("objective")
    @classmethod
    def _objective_syntax(cls, text: str) -> str:
        from matcard.calibration import check_objective_syntax

        try:
            return check_objective_syntax(text)
        except ConfigError as error:
            raise ValueError(str(error).removeprefix("decision.objective: ")) from None


class TrainConfig(_Section):
    """A complete, resolved training run."""

    data: DataConfig = Field(default_factory=DataConfig)
    featurizer: FeaturizerConfig = Field(default_factory=FeaturizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    out: str | None = Field(None, description="run directory; None: runs/<dataset>-<model>-<loss>-<time>")

    @model_validator(mode="after")
    def _check_fractions(self) -> TrainConfig:
        if self.data.val_fraction + self.data.test_fraction >= 0.8:
            raise ValueError("data.val_fraction + data.test_fraction must leave at least 20 % for training")
        if self.data.val_fraction + self.data.test_fraction + self.data.calibration_fraction >= 0.9:
            raise ValueError(
                "data.calibration_fraction: with val and test it must leave at least 10 % for training"
            )
        return self

    def featurizer_kind(self) -> str:
        """``graph``, ``composition`` or ``chgnet``: explicit, or the default of what the model consumes."""
        input_kind = MODEL_INPUT_KINDS[self.model.name]
        accepted = INPUT_FEATURIZERS[input_kind]
        if self.featurizer.kind == "auto":
            return accepted[0]
        if self.featurizer.kind not in accepted:
            raise ConfigError(
                f"featurizer.kind: model {self.model.name!r} needs {' or '.join(map(repr, accepted))} "
                f"features, not {self.featurizer.kind!r}"
            )
        return self.featurizer.kind

    def featurizer_settings(self) -> dict[str, Any]:
        """The featurizer config (``kind`` and its fields). chgnet_finetune's graphs come from the
        checkpoint it fine-tunes, so ``model.params.model_version`` sets the featurizer's too."""
        kind = self.featurizer_kind()
        settings: dict[str, Any] = {"kind": kind, **self.featurizer.params}
        if kind == "chgnet_graph":
            version = self.model.params.get("model_version", "0.3.0")
            given = settings.setdefault("model_version", version)
            if given != version:
                raise ConfigError(
                    f"featurizer.params.model_version: {given!r} differs from model.params.model_version "
                    f"{version!r}; chgnet_finetune builds its graphs with the checkpoint it fine-tunes"
                )
        return settings

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# Short CLI option names -> dotted config paths.
CLI_OVERRIDES: dict[str, str] = {
    "dataset": "data.dataset",
    "task": "data.task",
    "model": "model.name",
    "featurizer": "featurizer.kind",
    "loss": "loss.name",
    "epochs": "trainer.epochs",
    "timeout": "data.timeout",
    "batch_size": "trainer.batch_size",
    "seed": "trainer.seed",
    "devices": "trainer.devices",
    "accelerator": "trainer.accelerator",
    "lr": "optim.lr",
    "objective": "decision.objective",
    "alpha": "decision.alpha",
    "out": "out",
}


def format_validation_error(error: ValidationError, origin: str) -> ConfigError:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(
            f"{where}: {message}"
            + (
                f" (got {item['input']!r})"
                if item["type"] != "extra_forbidden" and not isinstance(item.get("input"), dict)
                else ""
            )
        )
    return ConfigError(f"invalid configuration{origin}: " + "; ".join(lines))


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: cannot set a key inside non-mapping {part!r}")
        node = child
    node[parts[-1]] = value


def parse_assignment(assignment: str) -> tuple[str, Any]:
    """``"optim.lr=1e-3"`` -> ``("optim.lr", 0.001)``; the value is parsed as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE with a dotted key, got {assignment!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"{key.strip()}: cannot parse value {raw!r}: {error}") from error
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
        value = float(value)  # YAML 1.1 reads "1e-3" as a string; a user typing it means a number
    return key.strip(), value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Build a validated TrainConfig: embedded defaults <- ``base`` <- YAML ``path`` <- ``overrides``.

    ``overrides`` maps dotted paths (``"trainer.epochs"``) or CLI short names (``"epochs"``) to
    values; ``None`` values are ignored (options the user did not give).
    """
    tree: dict[str, Any] = copy.deepcopy(base or {})  # overrides must never write into the caller's dict
    origin = ""
    if path is not None:
        tree = _deep_merge(tree, read_yaml(path))
        origin = f" in {path}"
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        set_dotted(tree, CLI_OVERRIDES.get(key, key), value)
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as error:
        raise format_validation_error(error, origin) from None


def config_from_any(
    config: TrainConfig | dict[str, Any] | str | Path | None = None, **kwargs: Any
) -> TrainConfig:
    """Accept what ``matcard.train`` accepts: a TrainConfig, a nested dict, a YAML path, or kwargs."""
    if isinstance(config, TrainConfig):
        if kwargs:
            return load_config(base=config.model_dump(mode="json"), overrides=kwargs)
        return config
    if isinstance(config, str | Path):
        return load_config(config, overrides=kwargs)
    return load_config(base=config or {}, overrides=kwargs)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


__all__ = [
    "CLI_OVERRIDES",
    "DataConfig",
    "DecisionConfig",
    "FeaturizerConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "SamplerConfig",
    "TrainConfig",
    "TrainerConfig",
    "config_from_any",
    "load_config",
    "parse_assignment",
    "read_yaml",
]
