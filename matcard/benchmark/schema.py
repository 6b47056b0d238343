"""Study schema: the YAML a study is written in, its entries and the result it produces."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from matcard.errors import ConfigError, UsageError

CELL_FILE = "cell.json"
TABLE_METRICS: tuple[str, ...] = (
    "macro_f1", "balanced_accuracy", "minority_recall", "pr_auc_minority", "pr_auc_macro", "ece",
)  # fmt: skip
# paired against the baseline and, for an entry with a count-matched control, against the control
PAIRED_METRICS: tuple[str, ...] = ("macro_f1", "minority_recall", "pr_auc_minority")
METRIC_TITLES = {
    "macro_f1": "macro-F1",
    "balanced_accuracy": "balanced accuracy",
    "minority_recall": "minority recall",
    "pr_auc_minority": "minority PR-AUC",
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
CONTROL_LOSS = "weighted_ce"  # what a count-matched control entry trains
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
    # the reference forms say their mode: a plain ``magnitude`` / ``spread`` entry means the loss's
    # current default, and these rows must keep the meaning of the results published with them
    {
        "label": "magnitude_reference",
        "loss": "magnitude",
        "params": {"mode": "replace"},
        "note": "the reference form (replace), t = 1; collapses on real tasks",
    },
    {
        "label": "magnitude_reference_multiply",
        "loss": "magnitude",
        "params": {"mode": "multiply"},
        "note": "CE x magnitude (the reference invariant, t = 1)",
    },
    {
        "label": "magnitude_reference_add",
        "loss": "magnitude",
        "params": {"mode": "add"},
        "note": "CE + (magnitude - 1), lam 1, t = 1; collapses on binary tasks",
    },
    {
        "label": "magnitude_reference_add_lam0.1",
        "loss": "magnitude",
        "params": {"mode": "add", "lam": 0.1},
        "note": "CE + 0.1 (magnitude - 1), t = 1",
    },
    {
        "label": "spread_reference",
        "loss": "spread",
        "params": {"mode": "replace"},
        "note": "the reference form (replace), t = 1",
    },
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
    control_for: str | None = Field(
        None,
        description="count-matched control: train weighted_ce with fixed class weights equal to the "
        "realised class weights of this entry's cell of the same seed",
    )

    @model_validator(mode="before")
    @classmethod
    def _control_trains_weighted_ce(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("control_for") is not None:
            data = {"loss": CONTROL_LOSS, **data}
        return data

    @model_validator(mode="after")
    def _control_is_plain(self) -> LossEntry:
        if self.control_for is not None:
            if self.loss != CONTROL_LOSS:
                raise ValueError(f"losses[{self.label}].loss: a control entry trains {CONTROL_LOSS}")
            if self.params:
                raise ValueError(
                    f"losses[{self.label}].params: a control's class weights come from its entry's cells"
                )
        return self

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
        self._check_controls(labels)
        return self

    def _check_controls(self, labels: list[str]) -> None:
        controls = {entry.label: entry.control_for for entry in self.losses if entry.control_for}
        for label, target in controls.items():
            where = f"losses[{label}].control_for"
            if self.kind != "train":
                raise ValueError(f"{where}: count-matched controls need a train study (realised weights)")
            if target not in labels:
                raise ValueError(f"{where}: {target!r} is not the label of a loss entry {labels}")
            if target in controls or target == label:
                raise ValueError(f"{where}: {target!r} is itself a control; a control needs a trained loss")
            if label == self.baseline:
                raise ValueError(f"baseline: {label!r} is a control entry")

    def control_of(self, label: str) -> str | None:
        """The label of the control entry of ``label`` (the first, if several), or None."""
        return next((e.label for e in self.losses if e.control_for == label), None)


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
    # a control needs the cells of its entry
    keep |= {e.control_for for e in config.losses if e.label in keep and e.control_for}
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
