"""Self-describing model bundles: everything needed to use a trained model without its config.

A bundle is a directory (``RUN/model/``) with two files:

- ``bundle.json``: format version, matcard version, model architecture + parameters, featurizer
  config, task (label recipe), class names, training class counts, training statistics used by
  screening's out-of-distribution flags (elements seen, ranges of n_sites and volume per atom), and
  provenance (dataset, seed, loss).
- ``weights.pt``: the model's ``state_dict`` (tensors only; loaded with ``weights_only=True``).

``load_model(path)`` accepts the bundle directory, a run directory containing ``model/``, or the
``bundle.json`` file itself.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matcard._version import __version__
from matcard.errors import MatcardError, UsageError
from matcard.fileio import atomic_path, atomic_write_json

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch_geometric.data import Data

BUNDLE_FORMAT = 1
BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "weights.pt"


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

    def __init__(self, model: torch.nn.Module, info: dict[str, Any], path: Path | None = None) -> None:
        from matcard.featurize import featurizer_from_config

        self.model = model.eval()
        self.info = info
        self.path = path
        self.class_names: list[str] = list(info["class_names"])
        self.class_counts: list[int] = list(info.get("class_counts") or [])
        self.training_stats: dict[str, Any] = dict(info.get("training_stats") or {})
        self.featurizer = featurizer_from_config(info["featurizer"])
        self.task = task_from_dict(info.get("task"))
        self.model_name: str = info["model"]["name"]

    # --- info ---------------------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return len(self.class_names)

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
    def predict_logits_data(self, graphs: Sequence[Data], batch_size: int = 256) -> np.ndarray:
        import torch
        from torch_geometric.loader import DataLoader

        if len(graphs) == 0:
            return np.zeros((0, self.n_classes), dtype=np.float32)
        outputs = []
        device = self.device
        torch.set_flush_denormal(True)  # see matcard.training: denormals slow CPU matmuls ~10x
        self.model.eval()
        with torch.inference_mode():
            for batch in DataLoader(list(graphs), batch_size=batch_size, shuffle=False):
                logits, _ = self.model(batch.to(device))
                outputs.append(logits.float().cpu())
        return torch.cat(outputs).numpy()

    def predict_proba_data(self, graphs: Sequence[Data], batch_size: int = 256) -> np.ndarray:
        """Class probabilities [N, C] (float32) for already featurized inputs (used by screening)."""
        import torch

        logits = self.predict_logits_data(graphs, batch_size)
        return torch.softmax(torch.from_numpy(logits), dim=1).numpy()

    def featurize(self, items: Iterable[Any]) -> tuple[list[str], list[Data | None], list[str | None]]:
        """Ids, features (None where it failed) and failure reasons for arbitrary inputs."""
        ids: list[str] = []
        graphs: list[Data | None] = []
        errors: list[str | None] = []
        for index, item in enumerate(_expand_items(items)):
            item_id, payload, error = _identify(item, index)
            ids.append(item_id)
            if error is not None:
                graphs.append(None)
                errors.append(error)
                continue
            try:
                graphs.append(self.featurizer(payload))
                errors.append(None)
            except Exception as exc:  # per-item failure: report it, keep going
                graphs.append(None)
                errors.append(f"{type(exc).__name__}: {exc}")
        return ids, graphs, errors

    def predict(self, items: Iterable[Any], batch_size: int = 256) -> pd.DataFrame:
        """Predicted class and per-class probabilities for each input (see class docstring)."""
        import pandas as pd

        ids, graphs, errors = self.featurize(items)
        ok = [i for i, g in enumerate(graphs) if g is not None]
        proba = np.full((len(ids), self.n_classes), np.nan, dtype=np.float64)
        if ok:
            proba[ok] = self.predict_proba_data([graphs[i] for i in ok], batch_size)
        predicted = [
            self.class_names[int(np.argmax(row))] if error is None else None
            for row, error in zip(proba, errors, strict=True)
        ]
        frame = pd.DataFrame({"id": ids, "predicted_class": predicted})
        for c, name in enumerate(self.class_names):
            frame[f"prob_{name}"] = proba[:, c]
        frame["error"] = errors
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
        self, graphs: Sequence[Data], y: Sequence[int], batch_size: int = 256
    ) -> dict[str, Any]:
        """All §6 metrics of this model on featurized inputs with integer labels."""
        from matcard.metrics import classification_metrics

        return classification_metrics(
            np.asarray(y), self.predict_proba_data(graphs, batch_size), self.class_names
        )


def _expand_items(items: Iterable[Any]) -> Iterable[Any]:
    """Paths are read with matcard's structure readers; everything else passes through."""
    if isinstance(items, str | Path) or not isinstance(items, Iterable):
        items = [items]
    for item in items:
        if isinstance(item, Path) or (isinstance(item, str) and Path(item).exists()):
            from matcard.structures import read_structures

            result = read_structures(item)
            yield from result.records
            yield from result.failures
        else:
            yield item


def _identify(item: Any, index: int) -> tuple[str, Any, str | None]:
    """(id, what to featurize, error) for one input item."""
    if hasattr(item, "reason") and hasattr(item, "source") and not hasattr(item, "structure"):
        return str(item.source), None, f"read failure: {item.reason}"  # a ReadFailure
    if hasattr(item, "structure") and hasattr(item, "id"):
        return str(item.id), item.structure, None  # a StructureRecord
    return str(index), item, None


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
    atomic_write_json(directory / BUNDLE_FILE, info)
    return directory


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
    """Restore a TrainedModel from a bundle (or a run) directory; no original config needed."""
    import torch

    from matcard.models import build_model

    bundle_dir = resolve_bundle_dir(path)
    try:
        info = json.loads((bundle_dir / BUNDLE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise MatcardError(f"cannot read {bundle_dir / BUNDLE_FILE}: {error}") from error
    if int(info.get("format", 0)) > BUNDLE_FORMAT:
        raise MatcardError(
            f"{bundle_dir} was written by a newer matcard (bundle format {info['format']}, "
            f"this version reads up to {BUNDLE_FORMAT}); upgrade matcard"
        )
    model_info = info["model"]
    model = build_model(
        model_info["name"], model_info["in_dim"], len(info["class_names"]), **model_info["params"]
    )
    weights = bundle_dir / WEIGHTS_FILE
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise MatcardError(f"cannot read weights {weights}: {error}") from error
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise MatcardError(
            f"weights in {weights} do not fit the model described in {BUNDLE_FILE}: {error}"
        ) from error
    trained = TrainedModel(model, info, bundle_dir)
    if device is not None:
        trained.to(_resolve_device(device))
    return trained


def _resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


__all__ = ["BUNDLE_FILE", "WEIGHTS_FILE", "TrainedModel", "load_model", "resolve_bundle_dir", "save_bundle"]
