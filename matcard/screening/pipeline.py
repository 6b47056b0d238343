"""``screen()``: stream structures through a trained model into ranked, resumable results.

read (main process, streaming: inputs.py) -> atom-balanced shards -> featurize + predict + flag (in
process, local worker processes or Dask) -> each finished shard committed to the shard store -> merge
into ``out`` (CSV or Parquet by extension), ``<out stem>.errors.csv`` and the ranked shortlist. With
the in-process backend the reader's worker processes also build the graphs and run a CPU model on
them (worker.GraphPreparer), so that parsing, graph building and the forward pass run in parallel.

Memory stays bounded: the reader streams, at most ``2 x workers`` shards are in flight, results go
to disk shard by shard, and the merge and shortlist read one shard part at a time.
"""

from __future__ import annotations

import glob
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from matcard.errors import MatcardError, UsageError
from matcard.fileio import atomic_path
from matcard.screening.backends import make_backend
from matcard.screening.fingerprint import (
    fingerprint,
    is_own_file,
    is_record,
    is_structure_object,
    list_input_files,
)
from matcard.screening.inputs import iter_items, reader_hook
from matcard.screening.shards import (
    ERROR_SCHEMA,
    ShardPlanner,
    ShardStore,
    item_key,
    prediction_schema,
)
from matcard.screening.worker import DecisionChoice, ShardItem, ShardOutput, ShardTask, TrainingDomain
from matcard.structures.compact import as_structure
from matcard.structures.records import StructureRecord, structure_arrays_of

OUTPUT_SUFFIXES = (".csv", ".parquet")
DEFAULT_BATCH_SIZE = 256


@dataclass
class ScreenResult:
    """What a screen produced; ``predictions``/``errors`` are DataFrames when ``out`` was None."""

    out: Path | None
    errors_path: Path | None
    shortlist_path: Path | None
    class_names: list[str]
    n_predicted: int
    n_failed: int
    n_flagged: int
    class_counts: dict[str, int]
    n_resumed: int  # items already finished by an interrupted run
    n_processed: int  # items predicted or failed by this run
    seconds: float
    backend: str
    shortlist_size: int = 0
    predictions: Any = None  # pandas.DataFrame when out is None
    errors: Any = None  # pandas.DataFrame when out is None
    shortlist: Any = None  # pandas.DataFrame when out is None and a class was ranked
    failure_reasons: dict[str, int] = field(default_factory=dict)
    flag_counts: dict[str, int] = field(default_factory=dict)  # rows carrying each flag name
    decision: str = "argmax"  # tuned / argmax / "argmax (no decision layer)"
    alpha: float | None = None

    @property
    def per_second(self) -> float:
        return self.n_processed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out) if self.out else None,
            "errors_path": str(self.errors_path) if self.errors_path else None,
            "shortlist_path": str(self.shortlist_path) if self.shortlist_path else None,
            "class_names": self.class_names,
            "n_predicted": self.n_predicted,
            "n_failed": self.n_failed,
            "n_flagged": self.n_flagged,
            "class_counts": self.class_counts,
            "shortlist_size": self.shortlist_size,
            "n_resumed": self.n_resumed,
            "n_processed": self.n_processed,
            "seconds": round(self.seconds, 3),
            "structures_per_second": round(self.per_second, 2),
            "backend": self.backend,
            "failure_reasons": self.failure_reasons,
            "flag_counts": self.flag_counts,
            "decision": self.decision,
            "alpha": self.alpha,
        }


def state_dir_for(out: Path) -> Path:
    """Where a screen keeps its shard parts and manifest until the final merge."""
    return out.with_name(f"{out.stem}.parts")


def errors_path_for(out: Path) -> Path:
    return out.with_name(f"{out.stem}.errors.csv")


def shortlist_path_for(out: Path) -> Path:
    return out.with_name(f"{out.stem}.shortlist{out.suffix}")


def screen(
    model: Any,
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 1,
    scheduler: Any | None = None,
    resume: bool = False,
    overwrite: bool = False,
    target_class: str | None = None,
    min_prob: float | None = None,
    top_k: int | None = None,
    shortlist: str | os.PathLike[str] | None = None,
    ase_db: str | os.PathLike[str] | None = None,
    disorder: str = "skip",
    timeout: float = 10.0,
    shard_atoms: int | None = None,
    keep_parts: bool = False,
    progress: bool = True,
    decision: str | None = None,
    alpha: float | None = None,
) -> ScreenResult:
    """Screen ``inputs`` with ``model`` (a TrainedModel or a bundle/run path).

    ``decision``: ``tuned`` (the bundle's decision layer; the default when it has one) or
    ``argmax``; probabilities are calibrated whenever the bundle has a layer, so the shortlist ranks
    by calibrated probability. ``alpha`` adds a ``prediction_set`` column (conformal, 1 - alpha).

    ``inputs``: files, folders, globs, ASE databases, CSV/Parquet with a CIF column, or registry
    dataset names. ``out``: ``.csv`` or ``.parquet``; None keeps everything in memory and returns the
    DataFrames on the result. ``workers`` local processes, or ``scheduler`` (a Dask scheduler
    address or ``distributed.Client``). ``resume`` continues an interrupted screen into the same
    ``out``. ``target_class``/``min_prob``/``top_k`` write a ranked shortlist. ``ase_db`` writes
    each prediction into that ASE database as key-value pairs (see ``write_ase_db``).
    """
    single = isinstance(inputs, str | os.PathLike) or is_record(inputs) or is_structure_object(inputs)
    inputs_list = [inputs] if single else list(inputs)
    _validate(
        inputs_list,
        out,
        batch_size,
        workers,
        min_prob,
        top_k,
        target_class,
        shard_atoms,
        disorder,
        resume,
        overwrite,
    )
    from matcard.decision import check_alpha, check_mode

    check_mode(decision)
    check_alpha(alpha)
    model_ref, model = _load(model)
    choice = _decision_choice(model, decision, alpha)
    class_names = list(model.class_names)
    if target_class is not None and target_class not in class_names:
        raise UsageError(
            f"--class: {target_class!r} is not a class of this model (classes: {', '.join(class_names)})"
        )
    sources = _resolve_inputs(inputs_list)

    if out is None:  # in-memory: run into a temporary directory, hand back DataFrames
        with tempfile.TemporaryDirectory(prefix="matcard-screen-") as tmp:
            result = _run(
                model,
                model_ref,
                sources,
                Path(tmp) / "screen.parquet",
                class_names,
                batch_size=batch_size,
                workers=workers,
                scheduler=scheduler,
                resume=False,
                overwrite=True,
                target_class=target_class,
                min_prob=min_prob,
                top_k=top_k,
                shortlist=None,
                ase_db=ase_db,
                disorder=disorder,
                timeout=timeout,
                shard_atoms=shard_atoms,
                keep_parts=False,
                progress=progress,
                choice=choice,
            )
            import pandas as pd

            result.predictions = pd.read_parquet(result.out)
            result.errors = pd.read_csv(result.errors_path, dtype=str, keep_default_na=False)
            if result.shortlist_path is not None:
                result.shortlist = pd.read_parquet(result.shortlist_path)
            result.out = result.errors_path = result.shortlist_path = None
            return result
    return _run(
        model,
        model_ref,
        sources,
        Path(out),
        class_names,
        batch_size=batch_size,
        workers=workers,
        scheduler=scheduler,
        resume=resume,
        overwrite=overwrite,
        target_class=target_class,
        min_prob=min_prob,
        top_k=top_k,
        shortlist=shortlist,
        ase_db=ase_db,
        disorder=disorder,
        timeout=timeout,
        shard_atoms=shard_atoms,
        keep_parts=keep_parts,
        progress=progress,
        choice=choice,
    )


def _decision_choice(model: Any, decision: str | None, alpha: float | None) -> DecisionChoice:
    """The decision mode for this model; a model without a decision layer predicts argmax (warned)."""
    from matcard.console import console, escape

    if hasattr(model, "resolve_decision"):
        mode = model.resolve_decision(decision, alpha)
        if getattr(model, "decision", None) is None:
            console.print(
                f"[yellow]warning:[/] {escape(getattr(model, 'path', None) or 'this model')} has no decision "
                "layer: argmax of uncalibrated probabilities (matcard calibrate RUN fits one)"
            )
        return DecisionChoice(mode, alpha)
    if decision == "tuned" or alpha is not None:
        raise UsageError("--decision tuned / --alpha need a matcard model bundle with a decision layer")
    return DecisionChoice("argmax", None)


# --------------------------------------------------------------------------- validation / inputs


def _validate(
    inputs: list[Any],
    out: Any,
    batch_size: int,
    workers: int,
    min_prob: float | None,
    top_k: int | None,
    target_class: str | None,
    shard_atoms: int | None,
    disorder: str,
    resume: bool,
    overwrite: bool,
) -> None:
    if not inputs:
        raise UsageError("inputs: give at least one file, folder, glob, database or dataset name")
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other: choose one")
    if out is not None and Path(out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"--out: {out} must end in .csv or .parquet")
    if batch_size < 1:
        raise UsageError(f"--batch-size: must be >= 1, got {batch_size}")
    if workers < 1:
        raise UsageError(f"--workers: must be >= 1, got {workers}")
    if min_prob is not None and not 0.0 <= min_prob <= 1.0:
        raise UsageError(f"--min-prob: must be between 0 and 1, got {min_prob}")
    if top_k is not None and top_k < 1:
        raise UsageError(f"--top-k: must be >= 1, got {top_k}")
    if (min_prob is not None or top_k is not None) and target_class is None:
        raise UsageError("--min-prob/--top-k rank one class: also give --class")
    if shard_atoms is not None and shard_atoms < 1:
        raise UsageError(f"shard_atoms: must be >= 1, got {shard_atoms}")
    if disorder not in ("skip", "keep", "majority"):
        raise UsageError(f"--disorder: must be skip, keep or majority, got {disorder!r}")


def _load(model: Any) -> tuple[Any, Any]:
    """(what to ship to workers, the model): a bundle path ships as the path, loaded once per worker."""
    if isinstance(model, str | os.PathLike):
        from matcard.bundle import load_model

        loaded = load_model(model)
        return str(Path(getattr(loaded, "path", None) or model).resolve()), loaded
    for attribute in ("class_names", "featurizer", "predict_proba_data"):
        if not hasattr(model, attribute):
            raise UsageError(f"model: expected a TrainedModel or a bundle path, got {type(model).__name__}")
    return model, model


def _resolve_inputs(inputs: list[Any]) -> list[Any]:
    """Paths and globs stay strings and in-memory structures stay objects (both for the structure
    reader); StructureRecords pass through; other names become registry Datasets."""
    sources: list[Any] = []
    for raw in inputs:
        if is_record(raw) or is_structure_object(raw):
            sources.append(raw)
            continue
        if not isinstance(raw, str | os.PathLike):
            raise UsageError(f"inputs: cannot screen a {type(raw).__name__}")
        text = os.fspath(raw)
        if Path(text).expanduser().exists() or glob.has_magic(text):
            if glob.has_magic(text) and not glob.glob(os.path.expanduser(text), recursive=True):
                raise UsageError(f"inputs: the pattern {text!r} matches no file")
            sources.append(text)
            continue
        sources.append(_load_registry_dataset(text))
    return sources


def _load_registry_dataset(name: str) -> Any:
    """A registry dataset (downloaded and parsed once, cached); structures are built lazily."""
    from matcard.datasets import load_dataset

    if "/" in name or os.sep in name:
        raise UsageError(f"inputs: no such file or folder: {name}")
    try:
        dataset = load_dataset(name)
    except UsageError as exc:
        raise UsageError(
            f"inputs: {name} is neither an existing path nor a registry dataset ({exc})"
        ) from exc
    if getattr(dataset, "store", None) is None:
        raise UsageError(f"inputs: dataset {name} holds compositions only; screening needs structures")
    return dataset


# --------------------------------------------------------------------------- the streaming loop


@dataclass
class _Pending:
    task: ShardTask
    read_failures: list[tuple[int, str, str, str, str]]


def _run(
    model: Any,
    model_ref: Any,
    sources: list[Any],
    out: Path,
    class_names: list[str],
    *,
    batch_size: int,
    workers: int,
    scheduler: Any | None,
    resume: bool,
    overwrite: bool,
    target_class: str | None,
    min_prob: float | None,
    top_k: int | None,
    shortlist: Any,
    ase_db: Any,
    disorder: str,
    timeout: float,
    shard_atoms: int | None,
    keep_parts: bool,
    progress: bool,
    choice: DecisionChoice,
) -> ScreenResult:
    from matcard.console import console, escape, make_progress

    out = out.resolve()
    schema = prediction_schema(class_names, with_sets=choice.alpha is not None)
    own = (out, errors_path_for(out), shortlist_path_for(out), state_dir_for(out))
    own += (Path(shortlist).resolve(),) if shortlist is not None else ()
    listing = list_input_files(sources, exclude=own, unstamped=[Path(ase_db)] if ase_db else [])
    # a resume with another decision mode / alpha would mix two kinds of rows
    stamp = fingerprint(model, sources, class_names, disorder, listing)
    stamp["decision"] = [choice.mode, choice.alpha]
    store = ShardStore(state_dir_for(out), stamp, schema, listing)
    store.open(resume=resume, overwrite=overwrite)
    _remove_stale_temp_files(out)
    finished = store.finished_keys()
    n_resumed = store.committed_items
    if resume and not store.shards:
        console.print(f"nothing to resume in {escape(store.directory)}: screening from the start")
    if resume and n_resumed:
        console.print(f"resuming: {n_resumed} item(s) in {len(store.shards)} shard(s) already done")

    domain = TrainingDomain.from_model(model)
    writer = _AseWriter(Path(ase_db), class_names) if ase_db is not None else None
    planner = ShardPlanner(shard_atoms or 16 * batch_size)
    next_index = store.next_index
    seen: set[int] = set()
    read_failures: list[tuple[int, str, str, str, str]] = []
    pending: dict[Any, _Pending] = {}
    n_processed = 0
    started = time.perf_counter()

    backend = make_backend(model, model_ref, workers=workers, scheduler=scheduler)
    stream: Any = None
    try:
        with make_progress(disable=not progress) as bar:
            job = bar.add_task("screening", total=None)

            def collect(futures: list[Any]) -> None:
                nonlocal n_processed
                for future in futures:
                    entry = pending.pop(future)
                    try:
                        output = backend.result(future)
                    except MatcardError:
                        raise
                    except Exception as exc:  # a crashed shard, not a bad structure (those are rows)
                        raise MatcardError(
                            f"shard {entry.task.index} failed on {backend.describe()}: "
                            f"{type(exc).__name__}: {exc}; finished shards are saved - rerun with --resume"
                        ) from exc
                    n_processed += _commit(store, entry, output, schema, writer)
                    bar.update(job, completed=n_processed)

            def dispatch(items: list[ShardItem]) -> None:
                nonlocal next_index, read_failures
                task = ShardTask(next_index, tuple(items), batch_size, domain, choice)
                next_index += 1
                entry = _Pending(task, read_failures)
                read_failures = []
                while len(pending) >= backend.max_in_flight:
                    collect(backend.wait_any(list(pending)))
                pending[backend.submit(task)] = entry
                collect([f for f in pending if f.done()])  # commit early: a kill loses less

            stream = iter_items(sources, disorder, timeout, reader_hook(backend, model))
            for seq, item in enumerate(stream):
                if seq % 256 == 0:
                    bar.update(job, description=f"screening (read {seq:,})")
                if is_own_file(str(item.source), own):
                    continue  # this screen's output or parts inside an input folder are not inputs
                # isinstance first: hasattr would build a CompactRecord's Structure just to look
                if isinstance(item, StructureRecord) or hasattr(item, "structure"):
                    key = item_key(str(item.id), str(item.source))
                    if key in finished or key in seen:
                        continue
                    seen.add(key)
                    arrays = structure_arrays_of(item)  # the reader's arrays: no Structure built here
                    structure = arrays if arrays is not None else item.structure
                    features = getattr(item, "features", None)
                    shard_item = ShardItem(
                        seq, str(item.id), str(item.source), structure, tuple(item.flags or ()), features
                    )
                    shard = planner.add(shard_item, len(structure))
                    if shard is not None:
                        dispatch(shard)
                else:  # ReadFailure: committed with the shard being filled
                    key = item_key("", str(item.source))
                    if key in finished or key in seen:
                        continue
                    seen.add(key)
                    detail = str(getattr(item, "detail", "") or "")  # ReadFailure.detail where present
                    read_failures.append((seq, "", str(item.source), str(item.reason), detail))
            bar.update(job, description="screening")
            tail = planner.flush()
            if tail is not None:
                dispatch(tail)
            if read_failures:  # failures after the last structure: a shard with no work
                entry = _Pending(ShardTask(next_index, (), batch_size, domain, choice), read_failures)
                n_processed += _commit(store, entry, ShardOutput(next_index, {}, [], 0.0), schema, writer)
                read_failures = []
            while pending:
                collect(backend.wait_any(list(pending)))
            bar.update(job, completed=n_processed, total=n_processed)
    finally:
        if stream is not None:
            stream.close()  # stop the reader thread and its parser processes now, not at GC time
        backend.close()
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - started

    result = _merge(store, out, class_names, target_class, min_prob, top_k, shortlist)
    result.n_resumed = n_resumed
    result.n_processed = n_processed
    result.seconds = seconds
    result.backend = backend.describe()
    no_layer = getattr(model, "decision", None) is None
    result.decision = "argmax (no decision layer)" if no_layer else choice.mode
    result.alpha = choice.alpha
    if not keep_parts:
        store.remove()
    return result


def _commit(store: ShardStore, entry: _Pending, output: ShardOutput, schema: pa.Schema, writer: Any) -> int:
    """Commit one finished shard (results + its errors); return how many items it settled."""
    columns = output.columns or {name: [] for name in schema.names}
    results = pa.Table.from_pydict(columns, schema=schema)
    error_rows = [*entry.read_failures, *output.errors]
    errors = pa.Table.from_pylist(
        [{"seq": s, "id": i, "source": src, "reason": r, "detail": d} for s, i, src, r, d in error_rows],
        schema=ERROR_SCHEMA,
    )
    if writer is not None and results.num_rows:  # idempotent upsert, before the commit point
        writer.write(entry.task.items, results)
    store.commit(entry.task.index, results, errors)
    return results.num_rows + errors.num_rows


def _remove_stale_temp_files(out: Path) -> None:
    """Temp files of a merge killed by SIGKILL (atomic_path cleans up only on exceptions)."""
    for target in (out, errors_path_for(out), shortlist_path_for(out)):
        for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
            stale.unlink(missing_ok=True)


# --------------------------------------------------------------------------- merge / shortlist


def _merge(
    store: ShardStore,
    out: Path,
    class_names: list[str],
    target_class: str | None,
    min_prob: float | None,
    top_k: int | None,
    shortlist: Any,
) -> ScreenResult:
    """Concatenate committed parts (input order) into the final files, one part at a time."""
    import pyarrow.compute as pc

    public = pa.schema([f for f in store.schema if f.name != "seq"])
    flag_names: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    n_predicted = n_flagged = 0
    ranked: pa.Table | None = None
    prob_column = f"prob_{target_class}" if target_class else None
    with atomic_path(out) as tmp, _TableWriter(tmp, public, parquet=_is_parquet(out)) as sink:
        for table in store.iter_results():
            table = table.select(public.names)
            sink.write(table)
            n_predicted += table.num_rows
            counts.update(table["predicted_class"].to_pylist())
            n_flagged += int(pc.sum(pc.not_equal(table["flags"], "")).as_py() or 0)
            for flags in table["flags"].to_pylist():
                if flags:  # count each flag name once per row ("unseen_element:Ru" -> "unseen_element")
                    flag_names.update({flag.split(":", 1)[0] for flag in flags.split(";")})
            if prob_column is not None:
                candidates = table
                if min_prob is not None:
                    candidates = table.filter(pc.greater_equal(table[prob_column], min_prob))
                ranked = candidates if ranked is None else pa.concat_tables([ranked, candidates])
                ranked = _rank(ranked, prob_column, top_k)

    errors_path = errors_path_for(out)
    n_failed = 0
    reasons: Counter[str] = Counter()
    error_schema = pa.schema([("source", pa.string()), ("reason", pa.string()), ("detail", pa.string())])
    with atomic_path(errors_path) as tmp, _TableWriter(tmp, error_schema, parquet=False) as sink:
        for table in store.iter_errors():
            sink.write(table.select(error_schema.names))
            n_failed += table.num_rows
            reasons.update(table["reason"].to_pylist())  # the full reason: colons belong to it

    shortlist_path = None
    shortlist_size = 0
    if prob_column is not None:
        shortlist_path = Path(shortlist) if shortlist is not None else shortlist_path_for(out)
        ranked = ranked if ranked is not None else public.empty_table()
        ranked = ranked.add_column(0, "rank", pa.array(range(1, ranked.num_rows + 1), pa.int64()))
        shortlist_size = ranked.num_rows
        with (
            atomic_path(shortlist_path) as tmp,
            _TableWriter(tmp, ranked.schema, _is_parquet(shortlist_path)) as sink,
        ):
            sink.write(ranked)
    return ScreenResult(
        out=out,
        errors_path=errors_path,
        shortlist_path=shortlist_path,
        class_names=class_names,
        n_predicted=n_predicted,
        n_failed=n_failed,
        n_flagged=n_flagged,
        class_counts={name: counts.get(name, 0) for name in class_names},
        n_resumed=0,
        n_processed=0,
        seconds=0.0,
        backend="",
        shortlist_size=shortlist_size,
        failure_reasons=top_reasons(reasons),
        flag_counts=dict(flag_names.most_common()),
    )


MAX_REASONS = 20  # distinct failure reasons kept in the summary; the rest are counted together


def top_reasons(reasons: Counter[str], limit: int = MAX_REASONS) -> dict[str, int]:
    """Full reason text -> count, most common first; beyond ``limit`` one 'other reasons' entry."""
    ranked = reasons.most_common()
    kept = dict(ranked[:limit])
    rest = ranked[limit:]
    if rest:
        kept[f"other reasons ({len(rest)} different)"] = sum(count for _, count in rest)
    return kept


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() == ".parquet"


def _rank(table: pa.Table, prob_column: str, top_k: int | None) -> pa.Table:
    """Highest probability first; ties broken by id so the order is reproducible."""
    table = table.sort_by([(prob_column, "descending"), ("id", "ascending")])
    return table.slice(0, top_k) if top_k is not None else table


class _TableWriter:
    """Stream Arrow tables into one CSV or Parquet file (format from the suffix of the target)."""

    def __init__(self, path: Path, schema: pa.Schema, parquet: bool) -> None:
        self.path = path
        self.schema = schema
        self.parquet = parquet
        self._writer: Any = None

    def __enter__(self) -> _TableWriter:
        if self.parquet:
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(self.path, self.schema)
        else:
            import pyarrow.csv as pacsv

            self._writer = pacsv.CSVWriter(self.path, self.schema)
        return self

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table.cast(self.schema))

    def __exit__(self, *exc: object) -> None:
        self._writer.close()


# --------------------------------------------------------------------------- ASE write-back


class _AseWriter:
    """Predictions as key-value pairs in an ASE database.

    A structure read from this same database (source ``<db>#id=<row>``) gets its own row updated;
    any other structure is written as a new row, matched on ``matcard_key`` (a hash of id + source)
    so a resumed or repeated screen updates the rows it wrote before instead of duplicating them.
    Keys: ``matcard_id``, ``matcard_class``, ``matcard_max_prob``, ``matcard_prob_<class>``,
    ``matcard_flags`` ("-" when none).
    """

    def __init__(self, path: Path, class_names: list[str]) -> None:
        import ase.db

        self.path = path.resolve()
        try:
            self.db = ase.db.connect(str(path))
        except Exception as exc:
            raise UsageError(f"--ase-db: cannot open {path} as an ASE database: {exc}") from exc
        self.prob_keys = {name: "matcard_prob_" + _ase_key(name) for name in class_names}

    def _own_row(self, source: str) -> int | None:
        path, _, row = source.rpartition("#id=")
        if path and row.isdigit() and Path(path).resolve() == self.path:
            return int(row)
        return None

    def write(self, items: Sequence[ShardItem], results: pa.Table) -> None:
        from pymatgen.io.ase import AseAtomsAdaptor

        by_seq = {item.seq: item for item in items}
        with self.db:  # one transaction per shard
            for row in results.to_pylist():
                key = f"k{item_key(row['id'], row['source']) & 0xFFFFFFFFFFFFFFFF:016x}"
                pairs = {
                    "matcard_key": key,
                    "matcard_id": _ase_value(row["id"]),
                    "matcard_class": _ase_value(row["predicted_class"]),
                    "matcard_max_prob": float(row["max_prob"]),
                    "matcard_flags": row["flags"] or "-",
                    **{ase_key: float(row[f"prob_{name}"]) for name, ase_key in self.prob_keys.items()},
                }
                own = self._own_row(row["source"])
                existing = [own] if own is not None else [r.id for r in self.db.select(matcard_key=key)]
                if existing:
                    self.db.update(existing[0], **pairs)
                else:
                    atoms = AseAtomsAdaptor.get_atoms(as_structure(by_seq[row["seq"]].structure))
                    self.db.write(atoms, key_value_pairs=pairs)

    def close(self) -> None:
        close = getattr(self.db, "close", None)
        if close is not None:
            close()


def _ase_value(text: str) -> Any:
    """ASE refuses strings that read as numbers or booleans ("42", "True"): store those typed."""
    from ase.db.core import convert_str_to_int_float_bool_or_str

    return convert_str_to_int_float_bool_or_str(text)


def _ase_key(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in name)
    return cleaned or "class"
