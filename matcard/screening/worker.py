"""The per-shard work of a screen: featurize with the bundle's featurizer, predict, flag.

Runs in the calling process, in a local worker process or on a Dask worker; everything here is
picklable and takes the model explicitly, so every backend computes exactly the same thing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from matcard.errors import plain_reason
from matcard.structures.compact import CompactStructure, as_structure
from matcard.structures.records import StructureRecord, structure_arrays_of


class ScreeningModel(Protocol):
    """What screening needs from a trained model (matcard.bundle.TrainedModel provides it)."""

    class_names: list[str]
    featurizer: Any
    training_stats: Any

    def predict_proba_data(self, data: list[Any]) -> np.ndarray: ...


@dataclass(frozen=True)
class ShardItem:
    seq: int  # position in the input stream (keeps the output in input order)
    id: str
    source: str
    structure: Any  # pymatgen Structure, or a CompactStructure (the reader's arrays, nothing built)
    flags: tuple[str, ...] = ()  # flags raised by the reader (cif warnings, disorder policy...)
    features: Any = None  # the graph built in the reader's worker (GraphPreparer), or None: build here


@dataclass(frozen=True)
class DecisionChoice:
    """How classes are decided: ``tuned`` (the bundle's decision layer) or ``argmax``; with
    ``alpha``, conformal prediction sets too (matcard.decision)."""

    mode: str = "argmax"
    alpha: float | None = None


@dataclass(frozen=True)
class ShardTask:
    index: int
    items: tuple[ShardItem, ...]
    batch_size: int
    domain: TrainingDomain
    decision: DecisionChoice = DecisionChoice()


@dataclass
class ShardOutput:
    index: int
    columns: dict[str, list[Any]]  # prediction columns (see shards.prediction_schema)
    errors: list[tuple[int, str, str, str, str]]  # (seq, id, source, plain reason, raw detail)
    seconds: float


# --------------------------------------------------------------------------- applicability domain


@dataclass(frozen=True)
class TrainingDomain:
    """What the model saw in training, for flagging inputs outside it.

    Built from ``TrainedModel.training_stats``; every part is optional so that a bundle without
    statistics simply raises fewer flags.
    """

    elements: frozenset[str] | None = None
    n_atoms_range: tuple[float, float] | None = None
    volume_per_atom_range: tuple[float, float] | None = None
    cutoff: float | None = None

    @classmethod
    def from_model(cls, model: ScreeningModel) -> TrainingDomain:
        stats = _as_dict(getattr(model, "training_stats", None))
        config = getattr(getattr(model, "featurizer", None), "config", None)
        cutoff = getattr(config, "cutoff", None)
        elements = stats.get("elements")
        if isinstance(elements, dict):  # {symbol: count}
            elements = list(elements)
        return cls(
            elements=frozenset(str(e) for e in elements) if elements else None,
            n_atoms_range=_range(stats, "n_atoms", "num_sites", "nsites"),
            volume_per_atom_range=_range(stats, "volume_per_atom", "volume_per_site"),
            cutoff=float(cutoff) if cutoff is not None else None,
        )


def _as_dict(stats: Any) -> dict[str, Any]:
    if stats is None:
        return {}
    if isinstance(stats, dict):
        return stats
    if hasattr(stats, "model_dump"):
        return stats.model_dump()
    if hasattr(stats, "__dict__"):
        return dict(vars(stats))
    return {}


def _range(stats: dict[str, Any], *names: str) -> tuple[float, float] | None:
    """Accept ``{"n_atoms": {"min": a, "max": b}}``, ``{"n_atoms": [a, b]}`` or ``n_atoms_min/max`` keys."""
    for name in names:
        value = stats.get(name)
        low = high = None
        if isinstance(value, dict):
            low, high = value.get("min"), value.get("max")
        elif isinstance(value, list | tuple) and len(value) == 2:
            low, high = value
        if low is None:
            low, high = stats.get(f"{name}_min"), stats.get(f"{name}_max")
        if low is not None and high is not None:
            return float(low), float(high)
    return None


def domain_flags(structure: Any, domain: TrainingDomain) -> list[str]:
    """Flags that need only the structure: element coverage, disorder, cell size vs training."""
    from pymatgen.core import Element

    flags: list[str] = []
    symbols: list[str] = []
    if isinstance(structure, CompactStructure):  # real elements only, ordered: the same flags, cheaper
        symbols = list(dict.fromkeys(structure.symbols))
    else:
        for element in structure.composition.elements:
            symbol = getattr(element, "symbol", str(element))
            if not Element.is_valid_symbol(symbol):  # dummy species, "X", "D" ...
                flags.append(f"unknown_element:{symbol}")
            else:
                symbols.append(symbol)
    if domain.elements is not None:
        unseen = sorted(set(symbols) - domain.elements)
        flags.extend(f"unseen_element:{symbol}" for symbol in unseen)
    if not structure.is_ordered:
        flags.append("disordered")
    n_atoms = len(structure)
    if domain.n_atoms_range is not None and not _inside(n_atoms, domain.n_atoms_range):
        flags.append(f"n_atoms_out_of_range:{n_atoms}")
    if domain.volume_per_atom_range is not None and n_atoms:
        volume_per_atom = structure.volume / n_atoms
        if not _inside(volume_per_atom, domain.volume_per_atom_range):
            flags.append(f"volume_per_atom_out_of_range:{volume_per_atom:.1f}")
    return flags


def _inside(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def _featurize(featurizer: Any, structure: Any) -> tuple[Any, list[str]]:
    """``Data`` plus the featurizer's own flags (GraphFeaturizer.build reports e.g. a grown cutoff)."""
    import warnings

    build = getattr(featurizer, "build", None)
    if isinstance(structure, CompactStructure):
        if build is not None and getattr(featurizer, "accepts_arrays", False):
            from matcard.featurize.graph import StructureArrays

            structure = StructureArrays.from_compact(structure)  # what build() derives from a Structure
        else:
            structure = structure.to_structure()
    with warnings.catch_warnings():  # the featurizer's warnings become flags on the row instead
        warnings.simplefilter("ignore")
        if build is not None:
            graph = build(structure)
            if hasattr(graph, "to_data"):
                return graph.to_data(), [str(f) for f in getattr(graph, "flags", ())]
        data = featurizer(structure)
    return data, [str(f) for f in (getattr(data, "flags", None) or ())]


# --------------------------------------------------------------------------- graphs built by the reader

# Larger structures are featurized in the shard: the reader's per-structure time limit is sized for
# parsing, and a graph of this many atoms takes milliseconds, far inside it.
PREPARE_MAX_ATOMS = 256


class _PreparedFailure(Exception):
    """A graph the reader's worker could not build: ``args`` = (plain reason, raw detail)."""


@dataclass(frozen=True)
class PreparedLogits:
    """A reader worker's prediction for one record: the model's logits and the graph's flags."""

    logits: np.ndarray  # [n_classes], as the model returned them
    flags: tuple[str, ...]


class GraphPreparer:
    """Reader hook (``iter_structures(prepare=...)``): build the graph of a record that carries arrays
    in the worker that parsed it, so graph building runs in parallel with the shard loop.

    Exactly what :func:`_featurize` would do with the same arrays (same builder, same flags; a
    failure keeps its plain reason and detail); the shard turns the arrays into ``Data``.

    With ``model`` (a CPU model with logits and a decision layer), :meth:`prepare_batch` also runs
    the model on each batch's graphs in the worker and hands back :class:`PreparedLogits` instead of
    the graphs: the shard loop then only decides and writes, and the forward pass, most of a
    screen's work, is spread over the reader's processes instead of queueing in the caller's. The
    logits agree with the caller's to float32 rounding (a forward pass's last bits depend on the
    batch's other graphs) and are the same every run: the reader's batches are fixed blocks.
    """

    reads_properties = False  # the table's other columns need not travel to the reader's workers

    def __init__(self, featurizer: Any, max_atoms: int = PREPARE_MAX_ATOMS, model: Any = None) -> None:
        self.featurizer = featurizer
        self.max_atoms = max_atoms
        self.model = model

    def __call__(self, outcome: Any) -> Any:
        import warnings

        from matcard.featurize.graph import StructureArrays

        arrays = structure_arrays_of(outcome) if isinstance(outcome, StructureRecord) else None
        if arrays is None or len(arrays) > self.max_atoms:
            return outcome
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outcome.features = self.featurizer.build(StructureArrays.from_compact(arrays))
        except Exception as exc:
            outcome.features = _PreparedFailure(*plain_reason(exc))
        return outcome

    def prepare_batch(self, outcomes: list[Any]) -> None:
        """Predict the graphs built for one batch of outcomes (with ``model``); a batch the model
        fails on keeps its graphs, and the caller predicts them as it would have."""
        from matcard.featurize.graph import GraphArrays

        if self.model is None:
            return
        records = [o for o in outcomes if isinstance(getattr(o, "features", None), GraphArrays)]
        if not records:
            return
        import torch

        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)  # one thread per reader process: the processes fill the cores
        try:
            logits = np.asarray(self.model.predict_logits_data([r.features for r in records]))
        except Exception:
            return
        if logits.shape[0] != len(records):
            return
        for record, row in zip(records, logits, strict=True):
            record.features = PreparedLogits(row.copy(), tuple(str(f) for f in record.features.flags))


def _from_prepared(features: Any, as_arrays: bool) -> tuple[Any, list[str]]:
    """What :class:`GraphPreparer` built (or its failure, raised) and its flags. A model that
    ``accepts_graph_arrays`` gets the arrays as they are and batches them without a ``Data`` per
    graph (``batch_graph_arrays``); any other gets ``Data``."""
    if isinstance(features, _PreparedFailure):
        raise features
    if isinstance(features, PreparedLogits):
        return features, list(features.flags)
    return (features if as_arrays else features.to_data()), [str(f) for f in features.flags]


def _featurize_batch(featurizer: Any, structures: Sequence[Any]) -> list[Any] | None:
    """Featurizers with a batched path (CHGNet runs its network on many structures at once) featurize
    the whole batch: per structure ``Data`` or the exception for it; None = featurize one by one."""
    import warnings

    many = getattr(featurizer, "featurize_many", None)
    if many is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return list(many([as_structure(s) for s in structures]))
    except Exception:  # the batch itself broke: the per-item path isolates the culprit
        return None


def graph_flags(
    data: Any, n_atoms: int, cutoff: float | None, featurizer_flags: Sequence[str] | None = None
) -> list[str]:
    """Flags about the graph: ``isolated_atom`` when an atom has no neighbour inside the cutoff.

    GraphFeaturizer grows the cutoff for such structures and reports ``cutoff_grown:8->12``; that
    flag is kept and ``isolated_atom`` added, so users filter on one name. For a featurizer that
    reports nothing (``featurizer_flags`` None) the edges are scanned instead.
    """
    if featurizer_flags is not None:
        flags = list(featurizer_flags)
        if any(f.startswith("cutoff_grown") for f in flags):
            flags.append("isolated_atom")
        return flags
    edge_index = getattr(data, "edge_index", None)
    if edge_index is None or n_atoms == 0 or getattr(data, "num_nodes", None) != n_atoms:
        return []  # composition descriptors: one row per structure, no graph
    import torch

    sources = edge_index[0]
    dist = getattr(data, "edge_dist", None)
    if dist is not None and cutoff is not None:
        sources = sources[dist <= cutoff + 1e-6]
    has_neighbour = torch.zeros(n_atoms, dtype=torch.bool)
    has_neighbour[sources] = True
    return ["isolated_atom"] if not bool(has_neighbour.all()) else []


# --------------------------------------------------------------------------- the shard


def run_shard(task: ShardTask, model: ScreeningModel) -> ShardOutput:
    """Featurize, predict and flag one shard; per-item failures become error rows."""
    started = time.perf_counter()
    class_names = list(model.class_names)
    columns: dict[str, list[Any]] = {
        "seq": [],
        "id": [],
        "source": [],
        "predicted_class": [],
        "argmax_class": [],
        **{f"prob_{name}": [] for name in class_names},
        "max_prob": [],
        **({"prediction_set": []} if task.decision.alpha is not None else {}),
        "flags": [],
    }
    errors: list[tuple[int, str, str, str, str]] = []
    items = task.items
    as_arrays = bool(getattr(model, "accepts_graph_arrays", False))
    for start in range(0, len(items), task.batch_size):
        batch = items[start : start + task.batch_size]
        ready: list[tuple[ShardItem, Any, list[str]]] = []
        batched = _featurize_batch(model.featurizer, [item.structure for item in batch])
        for index, item in enumerate(batch):
            try:
                flags = [*item.flags, *domain_flags(item.structure, task.domain)]
                if item.features is not None:
                    data, featurizer_flags = _from_prepared(item.features, as_arrays)
                elif batched is None:
                    data, featurizer_flags = _featurize(model.featurizer, item.structure)
                elif isinstance(batched[index], Exception):
                    raise batched[index]
                else:
                    data, featurizer_flags = batched[index], []
                for flag in graph_flags(data, len(item.structure), task.domain.cutoff, featurizer_flags):
                    if flag not in flags:
                        flags.append(flag)
            except Exception as exc:  # one bad structure never stops the shard
                reason, detail = exc.args if isinstance(exc, _PreparedFailure) else plain_reason(exc)
                errors.append((item.seq, item.id, item.source, f"cannot featurize: {reason}", detail))
                continue
            ready.append((item, data, flags))
        if not ready:
            continue
        try:
            decided = _predict(model, [data for _, data, _ in ready], task.decision)
            predicted = [(r, decided[i]) for i, r in enumerate(ready)]
        except Exception:  # isolate the item that breaks the batch
            predicted = []
            for entry in ready:
                try:
                    predicted.append((entry, _predict(model, [entry[1]], task.decision)[0]))
                except Exception as exc:
                    item = entry[0]
                    reason, detail = plain_reason(exc)
                    errors.append((item.seq, item.id, item.source, f"cannot predict: {reason}", detail))
        for (item, _, flags), (probs, chosen, best, members) in predicted:
            if not np.all(np.isfinite(probs)):
                reason = "cannot predict: the model gave non-finite probabilities"
                errors.append((item.seq, item.id, item.source, reason, ""))
                continue
            columns["seq"].append(item.seq)
            columns["id"].append(item.id)
            columns["source"].append(item.source)
            columns["predicted_class"].append(class_names[chosen])
            columns["argmax_class"].append(class_names[best])
            for name, value in zip(class_names, probs, strict=True):
                columns[f"prob_{name}"].append(float(value))
            columns["max_prob"].append(float(probs[best]))
            if "prediction_set" in columns:
                inside = zip(class_names, members, strict=True)
                columns["prediction_set"].append(";".join(name for name, member in inside if member))
            columns["flags"].append(";".join(dict.fromkeys(flags)))
    return ShardOutput(task.index, columns, errors, time.perf_counter() - started)


def _predict(
    model: ScreeningModel, data: Sequence[Any], choice: DecisionChoice
) -> list[tuple[np.ndarray, int, int, np.ndarray | None]]:
    """(calibrated probabilities, decided class, argmax class, set membership or None) per item.

    Models with a decision layer (TrainedModel.decide_logits) are applied to their logits; any other
    model's probabilities are used as they are, with argmax.
    """
    n_classes = len(model.class_names)
    if hasattr(model, "decide_logits") and hasattr(model, "predict_logits_data"):
        logits = _logits(model, data)
        if logits.shape != (len(data), n_classes):
            raise RuntimeError(f"model returned logits of shape {logits.shape} for {len(data)} inputs")
        decided = model.decide_logits(logits, choice.mode, choice.alpha)
        sets = decided.sets if decided.sets is not None else [None] * len(data)
        return [
            (decided.proba[i], int(decided.predicted[i]), int(decided.argmax[i]), sets[i])
            for i in range(len(data))
        ]
    probabilities = np.asarray(model.predict_proba_data(list(data)), dtype=np.float64)
    if probabilities.shape != (len(data), n_classes):
        raise RuntimeError(
            f"model returned probabilities of shape {probabilities.shape} for {len(data)} inputs"
        )
    best = probabilities.argmax(axis=1)
    return [(row, int(b), int(b), None) for row, b in zip(probabilities, best, strict=True)]


def _logits(model: Any, data: Sequence[Any]) -> np.ndarray:
    """Logits [N, C] (float64): those a reader worker computed, the model's for the rest."""
    rest = [d for d in data if not isinstance(d, PreparedLogits)]
    computed = iter(np.asarray(model.predict_logits_data(rest))) if rest else iter(())
    rows = [d.logits if isinstance(d, PreparedLogits) else next(computed) for d in data]
    return np.asarray(rows, dtype=np.float64).reshape(len(data), -1)


# --------------------------------------------------------------------------- worker processes

_WORKER_MODEL: ScreeningModel | None = None


def init_process_worker(model: Any) -> None:
    """ProcessPoolExecutor initializer: load the model once per process, one torch thread each."""
    global _WORKER_MODEL
    import torch

    torch.set_num_threads(1)  # N processes x 1 thread: no oversubscription of the cores
    _WORKER_MODEL = _materialize(model)


def run_shard_in_process_worker(task: ShardTask) -> ShardOutput:
    if _WORKER_MODEL is None:
        raise RuntimeError("worker process was not initialised with a model")
    return run_shard(task, _WORKER_MODEL)


def run_shard_on_dask(task: ShardTask, model: Any) -> ShardOutput:
    """Dask task: ``model`` is a scattered TrainedModel (or a bundle path readable by the worker)."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    return run_shard(task, _materialize(model))


_PATH_CACHE: dict[str, ScreeningModel] = {}


def _materialize(model: Any) -> ScreeningModel:
    """A model object, or a bundle path loaded once per process."""
    if isinstance(model, str):
        if model not in _PATH_CACHE:
            from matcard.bundle import load_model

            _PATH_CACHE[model] = load_model(model)
        return _PATH_CACHE[model]
    return model
