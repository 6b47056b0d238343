"""Summaries behind ``matcard inspect`` and ``matcard datasets`` (plain dicts, JSON-ready)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from matcard.datasets.dataset import Dataset, load_dataset
from matcard.datasets.download import is_downloaded
from matcard.datasets.registry import REGISTRY, DatasetSpec


def summarize(
    dataset: Dataset, task: str | None = None, *, with_labels: bool | None = None
) -> dict[str, Any]:
    """n_structures, n_failed, failures, class_counts, imbalance_ratio (and more) for a dataset.

    Labels are computed for ``task`` or, when None, for the dataset's default task if it has one
    that needs no symmetry analysis (a path's ``crystal_system`` runs spglib, so only on request).
    """
    summary: dict[str, Any] = {
        "name": dataset.name,
        "source": dataset.source,
        "kind": dataset.kind,
        "n_structures": len(dataset) if dataset.kind == "structures" else 0,
        "n_rows": len(dataset),
        "n_failed": len(dataset.failures),
        "failures": [f.to_dict() for f in dataset.failures],
        "skipped": [s.to_dict() for s in dataset.skipped],
        "tasks": list(dataset.tasks),
        "task": None,
        "class_counts": {},
        "imbalance_ratio": None,
    }
    given = dataset.given_splits()
    if given:
        summary["given_splits"] = {name: len(rows) for name, rows in given.items()}
    store = dataset.store
    if store is not None:
        flags = Counter(flag for record_flags in store.flags for flag in record_flags)
        summary["flags"] = dict(sorted(flags.items()))
        summary["n_sites"] = {
            "min": int(store.n_sites().min()) if len(store) else 0,
            "max": int(store.n_sites().max()) if len(store) else 0,
        }
    chosen = task
    if chosen is None and with_labels is not False:
        default = dataset.default_task
        is_path = dataset.spec is None
        if default is not None and not (is_path and default == "crystal_system"):
            chosen = default
    if chosen is not None and len(dataset):
        resolved = dataset.task(chosen)
        labels = dataset.labels(resolved)
        summary["task"] = resolved.name
        summary["class_counts"] = labels.class_counts()
        ratio = labels.imbalance_ratio
        summary["imbalance_ratio"] = round(ratio, 4) if ratio == ratio else None
    return summary


def inspect_source(
    source: str | os.PathLike[str],
    task: str | None = None,
    *,
    mirror: str | None = None,
    disorder: str = "skip",
    timeout: float | None = 10.0,
    workers: int | None = None,
    progress: bool = True,
    query: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load a registry dataset or a path and summarise it (see :func:`summarize`).

    ``query``: filters for a live dataset (materials-project)."""
    dataset = load_dataset(
        source,
        mirror=mirror,
        disorder=disorder,
        timeout=timeout,
        workers=workers,
        progress=progress,
        **(query or {}),
    )
    return summarize(dataset, task)


def registry_table(root: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """One row per registered dataset: name, kind, size, tasks, licence, cached state."""
    rows = []
    for spec in REGISTRY.values():
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "n_rows": spec.n_rows or None,
                "size_bytes": spec.size_bytes,
                "tasks": list(spec.tasks),
                "licence": spec.licence,
                "citation": spec.citation,
                "description": spec.description,
                "notes": spec.notes,
                "homepage": spec.homepage,
                "cached": _cached_state(spec, root),
                "files": [
                    {"path": f.relative_path, "url": f.url, "sha256": f.sha256, "size": f.size}
                    for f in spec.files
                ],
            }
        )
    return rows


def _cached_state(spec: DatasetSpec, root: str | os.PathLike[str] | None) -> str:
    if spec.embedded:
        return "embedded"
    if spec.live:
        return "live"
    return "yes" if is_downloaded(spec, Path(root) if root is not None else None) else "no"


__all__ = ["inspect_source", "registry_table", "summarize"]
