"""What a valid ``bundle.json`` looks like, and the checksums that prove a bundle is unedited.

Format 2 bundles record, besides the settings, ``files`` (sha256 and size of every other file of
the bundle, i.e. ``weights.pt``) and ``checksums`` (sha256 of the canonical JSON of each field that
defines the model's behaviour). ``verify_bundle_info`` checks both, so an edited ``featurizer.cutoff``,
reordered ``class_names`` or a replaced ``weights.pt`` fails loudly, naming the field or file.
Format 1 bundles (no checksums) still load; the caller marks them unverified.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from matcard.errors import BundleError
from matcard.fileio import sha256_file

BUNDLE_FORMAT = 2
LEGACY_FORMAT = 1  # no checksums: loaded, but marked unverified
BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "weights.pt"
# Fields whose content changes what the model predicts (provenance and versions do not).
CHECKED_FIELDS = ("model", "featurizer", "task", "class_names", "class_counts", "training_stats", "files")
# Checked whenever present (bundles written before the decision layer have none and still load).
OPTIONAL_CHECKED_FIELDS = ("decision",)


class ModelSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    in_dim: int = Field(ge=0)
    params: dict[str, Any] = Field(default_factory=dict)


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class RuleSection(BaseModel):
    model_config = ConfigDict(extra="allow")

    kind: Literal["argmax", "threshold", "offsets"]
    class_index: int | None = Field(None, ge=0, le=1)
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    method: Literal["coordinate_ascent", "logit_adjustment"] | None = None
    offsets: list[float] | None = None

    @model_validator(mode="after")
    def _complete(self) -> RuleSection:
        if self.kind == "threshold" and (self.threshold is None or self.class_index is None):
            raise ValueError("a threshold rule needs threshold and class_index")
        if self.kind == "offsets" and self.offsets is None:
            raise ValueError("an offsets rule needs offsets")
        return self


class ConformalSection(BaseModel):
    model_config = ConfigDict(extra="allow")

    alpha: float = Field(gt=0.0, lt=1.0)
    calibrated_on: Literal["calibration", "val"]
    guarantee: bool
    scores: list[list[float]]
    fallback_classes: list[str] = Field(default_factory=list)


class DecisionSection(BaseModel):
    """The post-hoc decision layer (matcard.decision): temperature, rule, conformal scores."""

    model_config = ConfigDict(extra="allow")

    temperature: float = Field(gt=0.0)
    objective: str = Field(min_length=1)
    rule: RuleSection
    conformal: ConformalSection | None = None
    fitted_on: dict[str, Any] = Field(default_factory=dict)


class BundleInfo(BaseModel):
    """Schema of ``bundle.json``; unknown extra keys are kept (newer writers may add some)."""

    model_config = ConfigDict(extra="allow")

    format: int = Field(ge=1)
    matcard_version: str | None = None
    torch_version: str | None = None
    model: ModelSection
    featurizer: dict[str, Any]
    task: dict[str, Any] | None = None
    class_names: list[str] = Field(min_length=1)
    class_counts: list[int] = Field(default_factory=list)
    training_stats: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, FileEntry] | None = None
    checksums: dict[str, str] | None = None
    decision: DecisionSection | None = None

    @model_validator(mode="after")
    def _consistent(self) -> BundleInfo:
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names: class names must be unique")
        if self.class_counts and len(self.class_counts) != len(self.class_names):
            raise ValueError(
                f"class_counts: {len(self.class_counts)} counts for {len(self.class_names)} classes"
            )
        if any(count < 0 for count in self.class_counts):
            raise ValueError("class_counts: counts must be >= 0")
        n_classes = len(self.class_names)
        if self.decision is not None:
            offsets = self.decision.rule.offsets
            if offsets is not None and len(offsets) != n_classes:
                raise ValueError(f"decision.rule.offsets: {len(offsets)} offsets for {n_classes} classes")
            if self.decision.rule.kind == "threshold" and n_classes != 2:
                raise ValueError("decision.rule: a threshold rule needs a binary task")
            if self.decision.conformal is not None and len(self.decision.conformal.scores) != n_classes:
                raise ValueError(f"decision.conformal.scores: not one list per class ({n_classes})")
        return self


def canonical_json(value: Any) -> bytes:
    """One byte string per JSON value: sorted keys, no whitespace (what the checksums hash)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def field_checksums(info: dict[str, Any]) -> dict[str, str]:
    names = CHECKED_FIELDS + tuple(name for name in OPTIONAL_CHECKED_FIELDS if name in info)
    return {name: hashlib.sha256(canonical_json(info.get(name))).hexdigest() for name in names}


def describe_files(directory: Path, names: tuple[str, ...] = (WEIGHTS_FILE,)) -> dict[str, dict[str, Any]]:
    return {
        name: {"sha256": sha256_file(directory / name), "size": (directory / name).stat().st_size}
        for name in names
    }


def seal(info: dict[str, Any], directory: Path) -> dict[str, Any]:
    """``info`` (JSON-normalised) with ``format``, ``files`` and ``checksums`` filled in."""
    sealed = json.loads(json.dumps(info, default=str))  # what will be read back from disk
    sealed["format"] = BUNDLE_FORMAT
    sealed["files"] = describe_files(directory)
    sealed.pop("checksums", None)
    sealed["checksums"] = field_checksums(sealed)
    return sealed


def validate_info(raw: Any, path: Path) -> BundleInfo:
    """The parsed schema, or BundleError naming the first bad field."""
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(raw).__name__}", field=BUNDLE_FILE)
    try:
        return BundleInfo.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        if not location and ":" in message:  # model-level checks name their field first
            location, message = (part.strip() for part in message.split(":", 1))
        location = location or "bundle"
        raise BundleError(f"{path}: field '{location}': {message}", field=location) from error


def verify_checksums(info: BundleInfo, raw: dict[str, Any], directory: Path) -> None:
    """Every checked field and file must match what was recorded when the bundle was written."""
    where = directory / BUNDLE_FILE
    for name in ("files", "checksums"):
        if getattr(info, name) is None:
            raise BundleError(
                f"{where}: field '{name}' is missing (required from bundle format {BUNDLE_FORMAT} on); "
                "the bundle cannot be verified",
                field=name,
            )
    recorded = info.checksums or {}
    actual = field_checksums(raw)
    optional = tuple(name for name in OPTIONAL_CHECKED_FIELDS if name in raw or name in recorded)
    for name in CHECKED_FIELDS + optional:
        if name not in recorded:
            raise BundleError(f"{where}: field 'checksums.{name}' is missing", field=f"checksums.{name}")
        if name not in actual or recorded[name] != actual[name]:
            raise BundleError(
                f"{where}: field '{name}' was changed after the bundle was written (its checksum does "
                "not match); restore the original bundle or retrain",
                field=name,
            )
    if WEIGHTS_FILE not in (info.files or {}):
        raise BundleError(f"{where}: field 'files' does not list {WEIGHTS_FILE}", field="files")
    for name, entry in (info.files or {}).items():
        check_file(directory / name, entry)


def check_file(path: Path, entry: FileEntry | None) -> None:
    """Say plainly what is wrong with a bundle file: missing, empty, truncated, checksum mismatch."""
    if not path.is_file():
        raise BundleError(f"{path.name} is missing from the bundle {path.parent}", field=path.name)
    size = path.stat().st_size
    if size == 0:
        expected = f"; expected {entry.size:,} bytes" if entry is not None else ""
        raise BundleError(f"cannot read {path}: the file is empty (0 bytes{expected})", field=path.name)
    if entry is None:
        return
    if size < entry.size:
        raise BundleError(
            f"cannot read {path}: the file is truncated or was replaced ({size:,} of {entry.size:,} bytes)",
            field=path.name,
        )
    if size != entry.size:
        raise BundleError(
            f"cannot read {path}: the file has {size:,} bytes, the bundle recorded {entry.size:,}",
            field=path.name,
        )
    if sha256_file(path) != entry.sha256:
        raise BundleError(
            f"cannot read {path}: checksum mismatch (sha256 differs from the one recorded in "
            f"{BUNDLE_FILE}); the file was replaced or corrupted",
            field=path.name,
        )
