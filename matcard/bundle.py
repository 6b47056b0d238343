"""Self-describing model bundles: everything needed to use a trained model without its config.

A bundle is a directory (``RUN/model/``) with two files:

- ``bundle.json``: format version, matcard version, model architecture + parameters, featurizer
  config, task (label recipe), class names, training class counts, training statistics used by
  screening's out-of-distribution flags (elements seen, ranges of n_sites and volume per atom), and
  provenance (dataset, seed, loss).
- ``weights.pt``: the model's ``state_dict`` (tensors only; loaded with ``weights_only=True``).

``bundle.json`` also records the sha256 of ``weights.pt`` and of each field that defines behaviour
(see matcard.bundle_schema); loading checks them, so an edited or replaced bundle fails naming the
field or file. Format 1 bundles (written before checksums) load with ``verified = False`` and an
``UnverifiedBundleWarning``; ``add_checksums(path)`` upgrades one in place.

``load_model(path)`` accepts the bundle directory, a run directory containing ``model/``, or the
``bundle.json`` file itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matcard._version import __version__
from matcard.bundle_schema import (
    BUNDLE_FILE,
    BUNDLE_FORMAT,
    CHECKED_FIELDS,
    LEGACY_FORMAT,
    OPTIONAL_CHECKED_FIELDS,
    WEIGHTS_FILE,
    canonical_json,
    check_file,
    seal,
    validate_info,
    verify_checksums,
)
from matcard.errors import BundleError, ConfigError, UsageError, plain_reason
from matcard.fileio import atomic_path, atomic_write_json

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch_geometric.data import Data

# Graphs per forward pass on a CPU when the caller names none (see predict_logits_data).
CPU_INFERENCE_BATCH = 32


class UnverifiedBundleWarning(UserWarning):
    """A bundle without checksums (format 1) was loaded: edits to it cannot be detected."""


class NoDecisionLayerWarning(UserWarning):
    """A bundle written before the decision layer: predictions are argmax, probabilities uncalibrated."""


def warn_no_decision_layer(path: Path | None) -> None:
    warnings.warn(
        f"{path or 'this model'} has no decision layer: predicting argmax of uncalibrated probabilities "
        "(matcard calibrate RUN fits one)",
        NoDecisionLayerWarning,
        stacklevel=3,
    )


def task_to_dict(task: Any) -> dict[str, Any] | None:
    """Serialise a task (label recipe) for the bundle; tasks provide ``to_dict`` per the contract."""
    if task is None:
        return None
    if isinstance(task, str):
        return {"name": task}
    for method in ("to_dict", "model_dump"):
        if callable(getattr(task, method, None)):
            return json.loads(json.dumps(getattr(task, method)(), default=str))
    if dataclasses.is_dataclass(task) and not isinstance(task, type):
        return json.loads(json.dumps(dataclasses.asdict(task), default=str))
    return {"name": str(getattr(task, "name", task))}


def task_from_dict(recipe: dict[str, Any] | None) -> Any:
    """Rebuild the task object when matcard.tasks can; otherwise keep the recipe dict."""
    if recipe is None:
        return None
    try:
        from matcard import tasks

        rebuild = getattr(tasks, "task_from_dict", None) or getattr(
            getattr(tasks, "Task", None), "from_dict", None
        )
        if rebuild is not None:
            return rebuild(recipe)
    except Exception:  # an old or foreign recipe must not make the model unusable
        pass
    return recipe


class TrainedModel:
    """A trained classifier with its featurizer, classes and provenance.

    ``predict(items)`` featurizes structures (pymatgen ``Structure``, ``StructureRecord``, file
    paths) or compositions (for composition models) and returns a DataFrame with ``id``,
    ``predicted_class``, ``prob_<class>`` for each class, and ``error`` (the reason an item could
    not be featurized; its probabilities are then NaN).
    """

    accepts_graph_arrays = True  # predict_*_data batches GraphArrays directly (screening's fast path)

    def __init__(
        self,
        model: torch.nn.Module,
        info: dict[str, Any],
        path: Path | None = None,
        *,
        featurizer: Any = None,
        verified: bool = True,
    ) -> None:
        from matcard.featurize import featurizer_from_config

        self.model = model.eval()
        self.info = info
        self.path = path
        self.verified = verified  # False: a bundle without checksums, loaded as is
        self.class_names: list[str] = list(info["class_names"])
        self.class_counts: list[int] = list(info.get("class_counts") or [])
        self.training_stats: dict[str, Any] = dict(info.get("training_stats") or {})
        self.featurizer = featurizer if featurizer is not None else featurizer_from_config(info["featurizer"])
        self.task = task_from_dict(info.get("task"))
        self.model_name: str = info["model"]["name"]
        self._content_hash: str | None = None
        from matcard.decision import DecisionLayer

        # None: a bundle written before the decision layer (argmax, flagged where it is used)
        self.decision = DecisionLayer.from_dict(info.get("decision"), self.class_names)

    # --- info ---------------------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def content_hash(self) -> str:
        """sha256 over the behaviour-defining settings and the weights (identifies the model's content)."""
        import torch

        if self._content_hash is None:
            digest = hashlib.sha256(
                canonical_json(
                    {k: self.info.get(k) for k in CHECKED_FIELDS + OPTIONAL_CHECKED_FIELDS if k != "files"}
                )
            )
            for key, tensor in sorted(self.model.state_dict().items()):
                digest.update(key.encode())
                flat = tensor.detach().cpu().contiguous().reshape(-1)
                digest.update(str(tensor.dtype).encode())
                digest.update(flat.view(torch.uint8).numpy().tobytes())  # any dtype, bfloat16 too
            self._content_hash = digest.hexdigest()
        return self._content_hash

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> TrainedModel:
        self.model.to(device)
        return self

    def __repr__(self) -> str:
        return (
            f"TrainedModel({self.model_name}, classes={self.class_names}, "
            f"featurizer={self.info['featurizer'].get('kind')}, path={self.path})"
        )

    # --- inference ----------------------------------------------------------------------------
    def predict_logits_data(self, graphs: Sequence[Any], batch_size: int | None = None) -> np.ndarray:
        """Logits [N, C] for featurized inputs: ``Data`` (or CHGNet graphs), or ``GraphArrays``.

        ``batch_size`` None: 32 graphs per forward pass on a CPU, 256 on an accelerator. On a CPU the
        per-edge tensors of 32 MP-20 graphs (~3.7k edges x 128 channels) stay in cache, those of 256 do
        not: a whole MP-20 screen ran 1,505 -> 1,705/s (2 cores, ``benchmarks/screen.py``).
        """
        import torch

        from matcard.featurize.graph import GraphArrays, batch_graph_arrays
        from matcard.loaders import make_loader

        if len(graphs) == 0:
            return np.zeros((0, self.n_classes), dtype=np.float32)
        outputs = []
        device = self.device
        if batch_size is None:
            batch_size = CPU_INFERENCE_BATCH if device.type == "cpu" else 256
        torch.set_flush_denormal(True)  # see matcard.training: denormals slow CPU matmuls ~10x
        self.model.eval()
        if all(isinstance(g, GraphArrays) for g in graphs):  # screening: graphs built as arrays
            loader: Any = (
                batch_graph_arrays(graphs[i : i + batch_size]) for i in range(0, len(graphs), batch_size)
            )
        else:
            loader = make_loader(self.info["featurizer"].get("kind"), graphs, batch_size=batch_size)
        with torch.inference_mode():
            for batch in loader:
                logits, _ = self.model(batch.to(device))
                outputs.append(logits.float().cpu())
        return torch.cat(outputs).numpy()

    def predict_proba_data(self, graphs: Sequence[Data], batch_size: int | None = None) -> np.ndarray:
        """Class probabilities [N, C] (float32) for already featurized inputs (used by screening)."""
        import torch

        logits = self.predict_logits_data(graphs, batch_size)
        return torch.softmax(torch.from_numpy(logits), dim=1).numpy()

    def resolve_decision(self, mode: str | None = None, alpha: float | None = None) -> str:
        """The decision mode to use (``tuned`` when the bundle has a layer), checking the options."""
        from matcard.decision import check_alpha, check_mode

        check_mode(mode)
        check_alpha(alpha)
        if self.decision is None:
            if mode == "tuned":
                raise UsageError(
                    "--decision tuned: this model has no decision layer (trained before it existed); "
                    "run matcard calibrate on its run directory, or use --decision argmax"
                )
            if alpha is not None:
                raise UsageError("--alpha: this model has no conformal calibration; run matcard calibrate")
            return "argmax"
        if alpha is not None:
            self.decision.require_scores()
        return mode or "tuned"

    def decide_logits(self, logits: np.ndarray, mode: str | None = None, alpha: float | None = None) -> Any:
        """Decisions (calibrated probabilities, classes, argmax, sets) for raw logits."""
        from matcard.decision import argmax_decisions

        mode = self.resolve_decision(mode, alpha)
        if self.decision is None:
            return argmax_decisions(logits)
        return self.decision.decide(logits, mode, alpha)

    def featurize(
        self, items: Iterable[Any]
    ) -> tuple[list[str], list[Data | None], list[str | None], list[str | None]]:
        """Ids, features (None where it failed), plain failure reasons and their raw details."""
        ids: list[str] = []
        graphs: list[Data | None] = []
        errors: list[str | None] = []
        details: list[str | None] = []
        takes_formulas = self.info["featurizer"].get("kind") == "composition"
        for index, item in enumerate(_expand_items(items, takes_formulas)):
            item_id, payload, error, detail = _identify(item, index)
            ids.append(item_id)
            if error is None:
                try:
                    graphs.append(self.featurizer(payload))
                    errors.append(None)
                    details.append(None)
                    continue
                except Exception as exc:  # per-item failure: report it, keep going
                    error, detail = plain_reason(exc)
            graphs.append(None)
            errors.append(error)
            details.append(detail)
        return ids, graphs, errors, details

    def predict(
        self,
        items: Iterable[Any],
        batch_size: int | None = None,
        *,
        decision: str | None = None,
        alpha: float | None = None,
    ) -> pd.DataFrame:
        """Predicted class (the decision layer's rule; ``decision="argmax"`` for the plain one),
        ``argmax_class``, calibrated ``prob_<class>``, and with ``alpha`` a ``prediction_set``."""
        import pandas as pd

        mode = self.resolve_decision(decision, alpha)
        ids, graphs, errors, details = self.featurize(items)
        ok = [i for i, g in enumerate(graphs) if g is not None]
        proba = np.full((len(ids), self.n_classes), np.nan, dtype=np.float64)
        predicted: list[str | None] = [None] * len(ids)
        argmax: list[str | None] = [None] * len(ids)
        sets: list[str | None] = [None] * len(ids)
        if ok:
            logits = self.predict_logits_data([graphs[i] for i in ok], batch_size)
            decided = self.decide_logits(logits, mode, alpha)
            proba[ok] = decided.proba
            for row, i in enumerate(ok):
                predicted[i] = self.class_names[int(decided.predicted[row])]
                argmax[i] = self.class_names[int(decided.argmax[row])]
            if decided.sets is not None:
                from matcard.conformal import format_sets

                for i, text in zip(ok, format_sets(decided.sets, self.class_names), strict=True):
                    sets[i] = text
        frame = pd.DataFrame({"id": ids, "predicted_class": predicted, "argmax_class": argmax})
        for c, name in enumerate(self.class_names):
            frame[f"prob_{name}"] = proba[:, c]
        if alpha is not None:
            frame["prediction_set"] = sets
        frame["error"] = errors
        frame["detail"] = details
        frame.attrs["decision"] = mode if self.decision is not None else "argmax (no decision layer)"
        if self.decision is None:
            warn_no_decision_layer(self.path)
        return frame

    def screen(self, inputs: Any, out: str | Path | None = None, **options: Any) -> Any:
        """Screen files, folders, globs, ASE databases, tables or dataset names with this model.

        ``out`` None: returns the predictions DataFrame (id, source, predicted_class, prob_<class>,
        max_prob, flags). Otherwise writes ``out`` (.csv/.parquet), ``<stem>.errors.csv`` and any
        shortlist, and returns the ScreenResult. Options: see ``matcard.screening.screen``.
        """
        from matcard.screening import screen

        result = screen(self, inputs, out, **options)
        return result.predictions if out is None else result

    def evaluate_data(
        self, graphs: Sequence[Data], y: Sequence[int], batch_size: int | None = None
    ) -> dict[str, Any]:
        """All §6 metrics of this model on featurized inputs with integer labels."""
        from matcard.metrics import classification_metrics

        return classification_metrics(
            np.asarray(y), self.predict_proba_data(graphs, batch_size), self.class_names
        )


def _expand_items(items: Iterable[Any], takes_formulas: bool = False) -> Iterable[Any]:
    """Paths are read with matcard's structure readers; everything else passes through.

    A string that names no file is a missing path (reported with the path as its id), except
    for composition models, which take formulas: there only strings that look like paths are.
    """
    from matcard.structures import ReadFailure

    if isinstance(items, str | Path) or not isinstance(items, Iterable):
        items = [items]
    for item in items:
        is_path = isinstance(item, os.PathLike) or (
            isinstance(item, str) and (Path(item).exists() or not takes_formulas or _looks_like_path(item))
        )
        if not is_path:
            yield item
        elif not Path(item).exists():
            yield ReadFailure(os.fspath(item), "file not found")
        else:
            from matcard.structures import read_structures

            result = read_structures(item)
            yield from result.records
            yield from result.failures


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or bool(Path(text).suffix)


def _identify(item: Any, index: int) -> tuple[str, Any, str | None, str | None]:
    """(id, what to featurize, plain error, raw detail) for one input item."""
    if hasattr(item, "reason") and hasattr(item, "source") and not hasattr(item, "structure"):
        detail = getattr(item, "detail", None) or None  # ReadFailure.detail where the reader has one
        return str(item.source), None, str(item.reason), detail
    if hasattr(item, "structure") and hasattr(item, "id"):
        return str(item.id), item.structure, None, None  # a StructureRecord
    return str(index), item, None, None


# --- save / load -------------------------------------------------------------------------------
def save_bundle(
    directory: str | Path,
    model: torch.nn.Module,
    *,
    model_name: str,
    model_params: dict[str, Any],
    in_dim: int,
    featurizer_config: dict[str, Any],
    class_names: Sequence[str],
    class_counts: Sequence[int],
    task: Any = None,
    training_stats: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    decision: dict[str, Any] | None = None,
) -> Path:
    """Write ``bundle.json`` and ``weights.pt`` atomically into ``directory``; return it."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        torch.save(state, tmp)
    info = {
        "format": BUNDLE_FORMAT,
        "matcard_version": __version__,
        "torch_version": torch.__version__,
        "model": {"name": model_name, "in_dim": int(in_dim), "params": dict(model_params)},
        "featurizer": dict(featurizer_config),
        "task": task_to_dict(task),
        "class_names": [str(name) for name in class_names],
        "class_counts": [int(count) for count in class_counts],
        "training_stats": training_stats or {},
        "provenance": provenance or {},
    }
    if decision is not None:
        info["decision"] = decision
    atomic_write_json(directory / BUNDLE_FILE, seal(info, directory))
    return directory


def set_decision(path: str | Path, decision: dict[str, Any] | None) -> Path:
    """Replace the ``decision`` section of a verified bundle (None removes it) and re-seal it."""
    bundle_dir = resolve_bundle_dir(path)
    load_model(bundle_dir)  # refuses an edited or corrupt bundle before anything is rewritten
    raw = _read_info(bundle_dir)
    raw.pop("decision", None)
    if decision is not None:
        raw["decision"] = decision
    sealed = seal(raw, bundle_dir)
    validate_info(sealed, bundle_dir / BUNDLE_FILE)
    atomic_write_json(bundle_dir / BUNDLE_FILE, sealed)
    return bundle_dir


def add_checksums(path: str | Path) -> Path:
    """Upgrade a format-1 bundle in place: record its current files and settings as the reference.

    Only for bundles you trust as they are now; a format-2 bundle is verified and left unchanged.
    """
    bundle_dir = resolve_bundle_dir(path)
    raw = _read_info(bundle_dir)
    if int(raw.get("format", 0)) >= BUNDLE_FORMAT:
        load_model(bundle_dir)  # verifies it
        return bundle_dir
    validate_info(raw, bundle_dir / BUNDLE_FILE)
    check_file(bundle_dir / WEIGHTS_FILE, None)
    atomic_write_json(bundle_dir / BUNDLE_FILE, seal(raw, bundle_dir))
    return bundle_dir


def resolve_bundle_dir(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file() and path.name == BUNDLE_FILE:
        return path.parent
    for candidate in (path, path / "model"):
        if (candidate / BUNDLE_FILE).is_file():
            return candidate
    if not path.exists():
        raise UsageError(f"no model at {path}: the path does not exist")
    raise UsageError(f"no model bundle at {path}: expected {BUNDLE_FILE} there or in {path / 'model'}")


def load_model(path: str | Path, device: str | None = "cpu") -> TrainedModel:
    """Restore a TrainedModel from a bundle (or a run) directory; no original config needed.

    Raises BundleError (exit 1) naming the field or file when ``bundle.json`` is invalid, a
    checksum does not match, or ``weights.pt`` is missing, empty, truncated or unreadable.
    """
    bundle_dir = resolve_bundle_dir(path)
    raw = _read_info(bundle_dir)
    info = validate_info(raw, bundle_dir / BUNDLE_FILE)
    verified = info.format > LEGACY_FORMAT
    if verified:
        verify_checksums(info, raw, bundle_dir)
    else:
        warnings.warn(
            f"{bundle_dir} has no checksums (bundle format {info.format}): edits to it cannot be "
            "detected; matcard.bundle.add_checksums(path) records them",
            UnverifiedBundleWarning,
            stacklevel=2,
        )
    _check_pinned_checkpoint(info, bundle_dir)
    featurizer = _build_featurizer(raw, bundle_dir)
    model = _build_model(info, bundle_dir)
    _load_weights(model, bundle_dir / WEIGHTS_FILE, info.files.get(WEIGHTS_FILE) if info.files else None)
    trained = TrainedModel(model, raw, bundle_dir, featurizer=featurizer, verified=verified)
    if device is not None:
        trained.to(_resolve_device(device))
    return trained


def _read_info(bundle_dir: Path) -> dict[str, Any]:
    """bundle.json as a dict, refusing a newer format before its schema is applied."""
    where = bundle_dir / BUNDLE_FILE
    try:
        raw = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"cannot read {where}: {error}", field=BUNDLE_FILE) from error
    if isinstance(raw, dict) and isinstance(raw.get("format"), int) and raw["format"] > BUNDLE_FORMAT:
        raise BundleError(
            f"{bundle_dir} was written by a newer matcard (bundle format {raw['format']}, "
            f"this version reads up to {BUNDLE_FORMAT}); upgrade matcard",
            field="format",
        )
    if not isinstance(raw, dict):
        validate_info(raw, where)  # raises, naming the problem
    return raw


def _check_pinned_checkpoint(info: Any, bundle_dir: Path) -> None:
    """A model that fine-tunes a pretrained checkpoint must name the same one as its graph featurizer:
    the graphs it was trained on came from that checkpoint's converter."""
    pinned = info.model.params.get("model_version")
    if info.featurizer.get("kind") != "chgnet_graph" or pinned is None:
        return
    graphs_from = info.featurizer.get("model_version")
    if pinned != graphs_from:
        raise BundleError(
            f"{bundle_dir / BUNDLE_FILE}: field 'model.params.model_version': CHGNet checkpoint "
            f"{pinned!r} differs from featurizer.model_version {graphs_from!r}; the bundle is inconsistent",
            field="model.params.model_version",
        )


def _build_featurizer(raw: dict[str, Any], bundle_dir: Path) -> Any:
    from matcard.featurize import featurizer_from_config

    try:
        return featurizer_from_config(raw["featurizer"])
    except ConfigError as error:
        field = str(error).split(":", 1)[0]
        raise BundleError(f"{bundle_dir / BUNDLE_FILE}: field '{field}': {error}", field=field) from error


def _build_model(info: Any, bundle_dir: Path) -> torch.nn.Module:
    from matcard.models import build_model

    try:
        return build_model(info.model.name, info.model.in_dim, len(info.class_names), **info.model.params)
    except ConfigError as error:
        field = str(error).split(":", 1)[0]
        raise BundleError(f"{bundle_dir / BUNDLE_FILE}: {error}", field=field) from error
    except TypeError as error:  # a parameter the architecture does not take
        raise BundleError(
            f"{bundle_dir / BUNDLE_FILE}: field 'model.params': {error}", field="model.params"
        ) from error


def _load_weights(model: torch.nn.Module, weights: Path, entry: Any) -> None:
    """Load ``weights.pt`` (tensors only) into ``model``, saying plainly what is wrong with it."""
    import torch

    check_file(weights, entry)  # missing, empty, truncated, checksum mismatch
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise BundleError(
            f"cannot read weights {weights}: it holds objects other than tensors, which matcard "
            f"refuses to unpickle ({str(error).splitlines()[0][:200]})",
            field=WEIGHTS_FILE,
        ) from error
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise BundleError(
            f"cannot read weights {weights}: not a readable PyTorch weights file (truncated or "
            f"corrupt?): {reason}",
            field=WEIGHTS_FILE,
        ) from error
    if not isinstance(state, dict):
        raise BundleError(
            f"cannot read weights {weights}: expected a state dict, found a {type(state).__name__}",
            field=WEIGHTS_FILE,
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise BundleError(
            f"weights in {weights} do not fit the model described in {BUNDLE_FILE}: "
            f"{' '.join(str(error).split())[:300]}",
            field=WEIGHTS_FILE,
        ) from error


def _resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


__all__ = [
    "BUNDLE_FILE",
    "BUNDLE_FORMAT",
    "WEIGHTS_FILE",
    "NoDecisionLayerWarning",
    "TrainedModel",
    "UnverifiedBundleWarning",
    "add_checksums",
    "load_model",
    "resolve_bundle_dir",
    "save_bundle",
    "set_decision",
]
