"""``Dataset`` and ``load_dataset``: registry datasets (downloaded, parsed once, cached as Parquet)
and any path a user points at (files, folders, globs, tables)."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from matcard.datasets.cache import (
    StructureStore,
    cache_key,
    parsed_cache_path,
    read_parsed,
    write_parsed,
)
from matcard.datasets.registry import REGISTRY, DatasetSpec, get_spec
from matcard.errors import MatcardError, UsageError
from matcard.structures import ReadFailure, StructureRecord
from matcard.tasks import CategoricalTask, CrystalSystemTask, Labels, Task, parse_task

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pymatgen.core import Composition, Structure

# Oxide columns of glass-tg; "FemOn" (iron oxide of unreported stoichiometry) is counted as Fe2O3.
GLASS_OXIDES: dict[str, str] = {
    "SiO2": "SiO2",
    "Al2O3": "Al2O3",
    "B2O3": "B2O3",
    "CaO": "CaO",
    "Na2O": "Na2O",
    "Li2O": "Li2O",
    "MgO": "MgO",
    "BaO": "BaO",
    "ZnO": "ZnO",
    "K2O": "K2O",
    "PbO": "PbO",
    "SrO": "SrO",
    "GeO2": "GeO2",
    "ZrO2": "ZrO2",
    "TiO2": "TiO2",
    "TeO2": "TeO2",
    "FemOn": "Fe2O3",
    "P2O5": "P2O5",
}
FORMULA_COLUMN_CANDIDATES = ("formula", "composition", "pretty_formula", "reduced_formula")


class Dataset:
    """A table of materials (one row per structure or composition) with named label tasks.

    ``table`` always has an ``id`` column. Structures are built lazily from a compact store.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        table: pd.DataFrame,
        *,
        tasks: dict[str, Task] | None = None,
        store: StructureStore | None = None,
        composition_fn: Callable[[pd.DataFrame], list[Composition]] | None = None,
        failures: Sequence[ReadFailure] = (),
        spec: DatasetSpec | None = None,
        content_hash: str | None = None,
        default_task: str | None = None,
        source: str | None = None,
    ) -> None:
        if "id" not in table.columns:
            raise ValueError("a dataset table needs an 'id' column")
        if store is not None and len(store) != len(table):
            raise ValueError(f"{len(store)} structures for {len(table)} table rows")
        self.name = name
        self.kind = kind
        self.table = table.reset_index(drop=True)
        self.tasks: dict[str, Task] = dict(tasks or {})
        self.failures: list[ReadFailure] = list(failures)
        self.skipped: list[ReadFailure] = []  # path sources: files holding no structure by design
        self.spec = spec
        self.default_task = default_task
        self.source = source or name
        self._store = store
        self._composition_fn = composition_fn
        self._compositions: list[Composition] | None = None
        self._content_hash = content_hash
        self._labels_cache: dict[Task, Labels] = {}

    # ---------------------------------------------------------------- basics
    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return f"Dataset(name={self.name!r}, kind={self.kind!r}, n={len(self)}, tasks={list(self.tasks)})"

    @property
    def ids(self) -> list[str]:
        return self.table["id"].astype(str).tolist()

    @property
    def store(self) -> StructureStore | None:
        return self._store

    def structures(self) -> list[Structure]:
        if self._store is None:
            raise UsageError(f"dataset {self.name!r} holds compositions, not structures")
        return self._store.structures()

    def structure(self, index: int) -> Structure:
        if self._store is None:
            raise UsageError(f"dataset {self.name!r} holds compositions, not structures")
        return self._store.structure(index)

    def records(self) -> list[StructureRecord]:
        """StructureRecords (id, source, structure, label column if any, flags)."""
        structures = self.structures()
        labels = self.table["label"].tolist() if "label" in self.table.columns else [None] * len(self)
        sources = (
            self.table["source"].tolist() if "source" in self.table.columns else [self.source] * len(self)
        )
        flags = self._store.flags if self._store is not None else [()] * len(self)
        return [
            StructureRecord(id=i, source=str(src), structure=s, label=lab, flags=tuple(f))
            for i, src, s, lab, f in zip(self.ids, sources, structures, labels, flags, strict=True)
        ]

    def compositions(self) -> list[Composition]:
        if self._compositions is None:
            if self._composition_fn is not None:
                self._compositions = self._composition_fn(self.table)
            elif self._store is not None:
                self._compositions = self._store.compositions()
            else:
                raise UsageError(f"dataset {self.name!r} has no compositions")
        return self._compositions

    @property
    def content_hash(self) -> str:
        """A digest of the dataset's content (ids, structures or table); a featurization cache key."""
        if self._content_hash is None:
            import hashlib

            import pandas as pd

            if self._store is not None:
                self._content_hash = self._store.content_hash(self.ids)
            else:
                digest = hashlib.sha256(
                    pd.util.hash_pandas_object(self.table, index=False).to_numpy().tobytes()
                )
                self._content_hash = digest.hexdigest()
        return self._content_hash

    # ---------------------------------------------------------------- labels
    def task(self, task: str | Task | dict[str, Any] | None = None) -> Task:
        """Resolve a task: a Task, its ``to_dict()`` form, a registered name or a task spec string."""
        if isinstance(task, Task):
            return task
        if isinstance(task, dict):
            from matcard.tasks import task_from_dict

            return task_from_dict(task)
        if task is None:
            if self.default_task is None:
                raise UsageError(
                    f"dataset {self.name!r} has no default task; choose one of {list(self.tasks)}"
                )
            task = self.default_task
        return parse_task(task, known=self.tasks)

    def labels(self, task: str | Task | dict[str, Any] | None = None) -> Labels:
        """Integer labels and class names for ``task`` (a registered name, a Task or a task spec)."""
        resolved = self.task(task)
        try:
            cached = self._labels_cache.get(resolved)
        except TypeError:  # an unhashable custom task: no memo
            cached = None
        if cached is None:
            cached = resolved.compute(self.table, self.structures if self._store is not None else None)
            with contextlib.suppress(TypeError):
                self._labels_cache[resolved] = cached
        # Callers get their own arrays (spglib-derived labels are worth computing once only).
        return Labels(cached.y.copy(), list(cached.class_names))

    def given_splits(self) -> dict[str, np.ndarray]:
        """The split published with the data (glass-tg: train / validation), else empty."""
        if "subset" not in self.table.columns:
            return {}
        subsets = self.table["subset"].astype(str).to_numpy()
        return {name: np.flatnonzero(subsets == name) for name in dict.fromkeys(subsets)}

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> Dataset:
        idx = np.asarray(indices, dtype=np.int64)
        sub = Dataset(
            name or self.name,
            self.kind,
            self.table.iloc[idx],
            tasks=self.tasks,
            store=self._store.subset(idx) if self._store is not None else None,
            composition_fn=self._composition_fn,
            spec=self.spec,
            default_task=self.default_task,
            source=self.source,
        )
        if self._compositions is not None:
            sub._compositions = [self._compositions[i] for i in idx]
        return sub


# -------------------------------------------------------------------------------------------
# Loaders
# -------------------------------------------------------------------------------------------
def _aflow_prototypes(spec: DatasetSpec) -> Dataset:
    import importlib.util

    import pandas as pd
    from pymatgen.core import Structure

    # Locate the file without importing pymatgen.analysis.prototypes (its import decodes ~10 s of data).
    found = importlib.util.find_spec("pymatgen.analysis.prototypes")
    locations = list(found.submodule_search_locations or []) if found is not None else []
    path = Path(locations[0] if locations else ".") / "aflow_prototypes.json.gz"
    if not path.is_file():
        raise MatcardError(f"the embedded AFLOW prototypes are missing from this pymatgen install ({path})")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        entries = json.load(fh)
    rows: list[dict[str, Any]] = []
    structures: list[Structure] = []
    seen: dict[str, int] = {}
    for entry in entries:
        tags = entry.get("tags", {})
        label = str(tags.get("aflow", ""))
        fields = label.split("_")
        seen[label] = seen.get(label, 0) + 1
        rows.append(
            {
                "id": label if seen[label] == 1 else f"{label}#{seen[label]}",
                "aflow": label,
                "pearson": tags.get("pearson"),
                "strukturbericht": tags.get("strukturbericht"),
                "mineral": tags.get("mineral"),
                "spacegroup.number": int(fields[2]),  # the AFLOW label's third field
            }
        )
        structures.append(Structure.from_dict(entry["snl"]))
    table = pd.DataFrame(rows)
    table["reduced_formula"] = reduced_formulas(structures)
    return Dataset(
        spec.name,
        spec.kind,
        table,
        tasks=spec.tasks,
        store=StructureStore.from_structures(structures),
        spec=spec,
        default_task=spec.default_task,
        source=str(path),
    )


def reduced_formulas(structures: Sequence[Structure]) -> list[str]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No Pauling electronegativity for He": ordering only
        return [s.composition.reduced_formula for s in structures]


def _read_csvs(paths: Sequence[Path], tags: Sequence[str], tag_column: str) -> pd.DataFrame:
    import pandas as pd

    frames = []
    for path, tag in zip(paths, tags, strict=True):
        frame = pd.read_csv(path)
        frame = frame.drop(columns=[c for c in frame.columns if str(c).startswith("Unnamed:")])
        frame.insert(0, tag_column, tag)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _stem(remote_name: str) -> str:
    return re.sub(r"(\.csv)?(\.gz)?$", "", remote_name)


def _parse_cif_table(
    spec: DatasetSpec, table: pd.DataFrame, *, disorder: str, workers: int | None, progress: bool
) -> tuple[pd.DataFrame, StructureStore, list[ReadFailure]]:
    from matcard.structures import parse_cif_strings

    outcomes = parse_cif_strings(
        table["cif"].tolist(),
        table["id"].astype(str).tolist(),
        disorder=disorder,  # type: ignore[arg-type]
        workers=workers,
        progress=progress,
        description=f"Parsing {spec.name} ({len(table):,} CIFs)",
        source_prefix=spec.name,
    )
    keep = [isinstance(o, StructureRecord) for o in outcomes]
    records = [o for o in outcomes if isinstance(o, StructureRecord)]
    failures = [o for o in outcomes if isinstance(o, ReadFailure)]
    kept = table.loc[keep].drop(columns=["cif"]).reset_index(drop=True)
    kept["reduced_formula"] = reduced_formulas([r.structure for r in records])
    store = StructureStore.from_structures([r.structure for r in records], [r.flags for r in records])
    return kept, store, failures


def _build_registry_dataset(
    spec: DatasetSpec, paths: list[Path], *, disorder: str, workers: int | None, progress: bool
) -> tuple[pd.DataFrame, StructureStore | None, list[ReadFailure]]:
    """Parse downloaded files into (table, structures, failures)."""
    import pandas as pd

    if spec.name in {"mp20-biternary", "perov5"}:
        table = _read_csvs(paths, [_stem(f.name) for f in spec.files], "source_file")
        table.insert(0, "id", table.pop("material_id").astype(str))
        return _parse_cif_table(spec, table, disorder=disorder, workers=workers, progress=progress)
    if spec.name == "glass-tg":
        table = _read_csvs(paths, ["train", "validation"], "subset")
        ids = [f"{s}-{i}" for s, i in zip(table["subset"], table.groupby("subset").cumcount(), strict=True)]
        table.insert(0, "id", ids)
        return table, None, []
    if spec.kind == "compositions":  # matbench formula,target
        from pymatgen.core import Composition

        table = pd.read_csv(paths[0])
        table.insert(0, "id", [f"{spec.name}-{i}" for i in range(len(table))])
        ok = []
        failures = []
        for identifier, formula in zip(table["id"], table["formula"], strict=True):
            try:
                Composition(str(formula))
                ok.append(True)
            except Exception as err:
                ok.append(False)
                failures.append(
                    ReadFailure(f"{spec.name}#{identifier}", f"invalid formula {formula!r}: {err}")
                )
        return table.loc[ok].reset_index(drop=True), None, failures
    raise MatcardError(f"no loader for dataset {spec.name!r}")  # pragma: no cover


def _composition_fn(spec_name: str) -> Callable[[pd.DataFrame], list[Composition]] | None:
    if spec_name == "glass-tg":
        return glass_compositions
    return formula_compositions


def glass_compositions(table: pd.DataFrame) -> list[Composition]:
    """Compositions of oxide glasses from mole percentages (FemOn counted as Fe2O3)."""
    from pymatgen.core import Composition

    oxides = {column: Composition(formula) for column, formula in GLASS_OXIDES.items()}
    columns = [c for c in GLASS_OXIDES if c in table.columns]
    values = table[columns].to_numpy(dtype=float)
    out = []
    for row in values:
        amounts: dict[str, float] = {}
        for column, amount in zip(columns, row, strict=True):
            if amount > 0:
                for element, n in oxides[column].items():
                    amounts[element.symbol] = amounts.get(element.symbol, 0.0) + amount * n
        out.append(Composition(amounts))
    return out


def formula_compositions(table: pd.DataFrame) -> list[Composition]:
    from pymatgen.core import Composition

    column = next((c for c in FORMULA_COLUMN_CANDIDATES if c in table.columns), None)
    if column is None:
        raise UsageError("this table has no formula column")
    return [Composition(str(f)) for f in table[column]]


def _load_registry(
    spec: DatasetSpec,
    *,
    mirror: str | None,
    root: Path,
    download: bool,
    disorder: str,
    workers: int | None,
    progress: bool,
    refresh: bool,
) -> Dataset:
    from matcard.datasets.download import download_dataset, is_downloaded

    if spec.embedded:
        return _aflow_prototypes(spec)
    key = cache_key(spec.name, disorder, *(f.sha256 for f in spec.files))
    cache_path = parsed_cache_path(root, spec.name, key)
    cached = None if refresh else read_parsed(cache_path)
    if cached is None:
        if not is_downloaded(spec, root) and not download:
            raise MatcardError(f"dataset {spec.name!r} is not downloaded; run `matcard download {spec.name}`")
        paths = download_dataset(spec, root=root, mirror=mirror, progress=progress)
        table, store, failures = _build_registry_dataset(
            spec, paths, disorder=disorder, workers=workers, progress=progress
        )
        content_hash = store.content_hash(table["id"].astype(str).tolist()) if store is not None else None
        write_parsed(
            cache_path,
            table,
            store,
            {
                "name": spec.name,
                "content_hash": content_hash,
                "failures": [f.to_dict() for f in failures],
            },
        )
    else:
        table, store, meta = cached
        failures = [ReadFailure.from_dict(f) for f in meta.get("failures", [])]
        content_hash = meta.get("content_hash")
    return Dataset(
        spec.name,
        spec.kind,
        table,
        tasks=spec.tasks,
        store=store,
        composition_fn=_composition_fn(spec.name) if spec.kind == "compositions" else None,
        failures=failures,
        spec=spec,
        content_hash=content_hash,
        default_task=spec.default_task,
        source=str(cache_path),
    )


def _load_path(
    sources: Sequence[str | os.PathLike[str]],
    *,
    disorder: str,
    workers: int | None,
    progress: bool,
    timeout: float | None,
    label_column: str | None,
    root: Path | None = None,
    cache: bool | None = None,
) -> Dataset:
    """Any file/folder/glob: structures via read_structures, or a composition table.

    Parsed structures are cached under ``root/parsed`` keyed on every file's path, size and mtime
    (``cache=None``: only inputs of at least PATH_CACHE_MIN_STRUCTURES structures)."""
    import pandas as pd

    from matcard.structures import detect_format, read_structures

    first = Path(os.fspath(sources[0]))
    if len(sources) == 1 and first.is_file() and detect_format(first) == "table":
        composition_table = _composition_table(first)
        if composition_table is not None:
            table = composition_table
            return Dataset(
                first.stem,
                "compositions",
                table,
                tasks=_generic_tasks(table, structures=False),
                composition_fn=formula_compositions,
                default_task="label" if "label" in table.columns else None,
                source=str(first),
            )
    name = first.name if len(sources) == 1 else "structures"
    source_text = ", ".join(map(str, sources))
    cache_path = None
    if cache is not False and root is not None:
        fingerprint = _path_fingerprint(sources)
        key = cache_key("path", disorder, timeout, label_column, json.dumps(fingerprint))
        cache_path = parsed_cache_path(root, f"path-{name}", key)
        cached = read_parsed(cache_path)
        if cached is not None:
            table, store, meta = cached
            return _path_dataset(
                name,
                table,
                store,
                [ReadFailure.from_dict(f) for f in meta.get("failures", [])],
                [ReadFailure.from_dict(f) for f in meta.get("skipped", [])],
                source_text,
                meta.get("content_hash"),
            )
    result = read_structures(
        *sources,
        disorder=disorder,  # type: ignore[arg-type]
        workers=workers,
        progress=progress,
        timeout=timeout,
        label_column=label_column,
    )
    seen: dict[str, int] = {}
    ids = []
    for record in result.records:  # ids must be unique (splits and caches key on them)
        seen[record.id] = seen.get(record.id, 0) + 1
        ids.append(record.id if seen[record.id] == 1 else f"{record.id}#{seen[record.id]}")
    rows = [{"id": i, "source": r.source, **r.properties} for i, r in zip(ids, result.records, strict=True)]
    table = pd.DataFrame(rows, columns=None if rows else ["id", "source"])
    if any(r.label is not None for r in result.records):
        table["label"] = [r.label for r in result.records]
    table["reduced_formula"] = reduced_formulas(result.structures)
    store = StructureStore.from_structures(result.structures, [r.flags for r in result.records])
    dataset = _path_dataset(name, table, store, result.failures, result.skipped, source_text, None)
    if cache_path is not None and (cache or len(result.records) >= PATH_CACHE_MIN_STRUCTURES):
        try:
            write_parsed(
                cache_path,
                table,
                store,
                {
                    "name": name,
                    "content_hash": dataset.content_hash,
                    "failures": [f.to_dict() for f in result.failures],
                    "skipped": [f.to_dict() for f in result.skipped],
                },
            )
        except Exception:  # e.g. mixed-type property columns Arrow cannot store: just don't cache
            cache_path.unlink(missing_ok=True)
    return dataset


PATH_CACHE_MIN_STRUCTURES = 1000  # smaller inputs parse in seconds; don't fill the cache with them


def _path_fingerprint(sources: Sequence[str | os.PathLike[str]]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every file the sources cover: any change invalidates the cache."""
    import glob

    files: list[Path] = []
    for source in sources:
        path = Path(os.fspath(source)).expanduser()
        matches = [path] if path.exists() else [Path(m) for m in sorted(glob.glob(str(path), recursive=True))]
        for match in matches:
            if match.is_dir():
                files.extend(
                    f
                    for f in sorted(match.rglob("*"))
                    if f.is_file() and not any(part.startswith(".") for part in f.relative_to(match).parts)
                )
            elif match.is_file():
                files.append(match)
    out = []
    for f in files:
        stat = f.stat()
        out.append((str(f.resolve()), stat.st_size, stat.st_mtime_ns))
    return out


def _path_dataset(
    name: str,
    table: pd.DataFrame,
    store: StructureStore | None,
    failures: Sequence[ReadFailure],
    skipped: Sequence[ReadFailure],
    source: str,
    content_hash: str | None,
) -> Dataset:
    tasks = _generic_tasks(table, structures=True)
    dataset = Dataset(
        name,
        "structures",
        table,
        tasks=tasks,
        store=store,
        failures=list(failures),
        default_task="label" if "label" in tasks else "crystal_system",
        source=source,
        content_hash=content_hash,
    )
    dataset.skipped = list(skipped)
    return dataset


def _composition_table(path: Path) -> pd.DataFrame | None:
    """A table without a structure column but with a formula column is a composition dataset.

    The decision is made on the head, so a structure table stays streamed by the structure reader; a
    table that cannot be read at all is left to that reader too, which reports it as a failure.
    """
    from matcard.structures.tables import SNIFF_ROWS, _read_table, find_structure_column

    try:
        head = _read_table(path, nrows=SNIFF_ROWS)
    except Exception:  # unreadable: read_structures reports the file with a plain reason
        return None
    lowered = {str(c).lower(): c for c in head.columns}
    formula = next((lowered[c] for c in FORMULA_COLUMN_CANDIDATES if c in lowered), None)
    if formula is None or find_structure_column(head)[0] is not None:
        return None
    try:
        table = _read_table(path)
    except Exception as err:
        from matcard.structures import plain_reason

        raise MatcardError(f"{path}: unreadable table: {plain_reason(err)[0]}") from err
    table = table.rename(columns={formula: "formula"})
    if "id" not in table.columns:
        table.insert(0, "id", [f"{path.stem}-{i}" for i in range(len(table))])
    if "target" in table.columns and "label" not in table.columns:
        table["label"] = table["target"]
    return table


def _generic_tasks(table: pd.DataFrame, *, structures: bool) -> dict[str, Task]:
    tasks: dict[str, Task] = {}
    if structures:
        tasks["crystal_system"] = CrystalSystemTask()
    if "label" in table.columns:
        values = table["label"].dropna()
        integral = len(values) == len(table) and all(float(v).is_integer() for v in values if _is_number(v))
        if integral or not all(_is_number(v) for v in values):
            tasks["label"] = CategoricalTask(name="label", description="the given labels", column="label")
    return tasks


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def load_dataset(
    name_or_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    mirror: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    disorder: str = "skip",
    workers: int | None = None,
    progress: bool = True,
    refresh: bool = False,
    timeout: float | None = 10.0,
    label_column: str | None = None,
    cache: bool | None = None,
    **query: Any,
) -> Dataset:
    """Load a registered dataset by name, or structures / compositions from paths.

    Registry datasets are downloaded on first use (``mirror`` or ``MATCARD_MIRROR`` replaces the
    upstream base URL), parsed once in parallel, and cached as Parquet under ``data_dir``
    (default: ``MATCARD_DATA_DIR``, ``data/`` in a checkout, or the user cache). ``materials-project``
    takes query keywords (see :func:`matcard.datasets.materials_project.query_materials_project`).
    Paths are parsed with :func:`matcard.structures.read_structures`; ``cache`` stores the parse
    (None: automatically for inputs of 1,000+ structures), invalidated by any file change.
    """
    from matcard.datasets import cache as cache_module

    root = Path(data_dir) if data_dir is not None else cache_module.data_dir()
    if isinstance(name_or_path, str) and name_or_path in REGISTRY:
        spec = get_spec(name_or_path)
        if spec.live:
            from matcard.datasets.materials_project import load_materials_project

            return load_materials_project(spec, progress=progress, **query)
        if query:
            raise UsageError(f"unexpected options for {spec.name}: {', '.join(query)}")
        return _load_registry(
            spec,
            mirror=mirror,
            root=root,
            download=download,
            disorder=disorder,
            workers=workers,
            progress=progress,
            refresh=refresh,
        )
    if query:
        raise UsageError(f"unexpected options for a path source: {', '.join(query)}")
    sources = (
        list(name_or_path) if isinstance(name_or_path, list | tuple) else [name_or_path]  # type: ignore[list-item]
    )
    for source in sources:
        text = os.fspath(source)
        if not Path(text).expanduser().exists() and not any(ch in text for ch in "*?["):
            if len(sources) == 1 and "/" not in text and "." not in text:
                get_spec(text)  # raises UsageError listing the registry, with close matches
            raise UsageError(f"no such file, folder or dataset: {text}")
    return _load_path(
        sources,
        disorder=disorder,
        workers=workers,
        progress=progress,
        timeout=timeout,
        label_column=label_column,
        root=root,
        cache=cache,
    )


__all__ = ["Dataset", "formula_compositions", "glass_compositions", "load_dataset"]
