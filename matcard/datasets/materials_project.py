"""Live Materials Project queries through the official ``mp-api`` client.

``load_dataset("materials-project", elements=["Si", "O"], num_elements=(2, 3), max_sites=20,
limit=500)`` asks the summary endpoint for structure, symmetry, band gap and magnetic ordering
and returns a structures :class:`~matcard.datasets.Dataset` with tasks ``crystal_system``,
``metal`` and ``magnetic_ordering``. The API key comes from ``api_key=`` or ``MP_API_KEY``; the
server from ``endpoint=`` or ``MP_API_ENDPOINT`` (default: the public Materials Project API).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

from matcard.datasets.cache import StructureStore
from matcard.datasets.registry import DatasetSpec
from matcard.errors import MatcardError, UsageError
from matcard.structures import ReadFailure

SUMMARY_FIELDS = [
    "material_id",
    "structure",
    "symmetry",
    "band_gap",
    "is_metal",
    "ordering",
    "formula_pretty",
    "energy_above_hull",
]
QUERY_OPTIONS = (
    "elements",
    "exclude_elements",
    "chemsys",
    "num_elements",
    "max_sites",
    "material_ids",
    "limit",
)


def _as_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _as_range(value: Any) -> tuple[int, int] | None:
    """``3`` -> (3, 3); ``"2-3"`` or ``(2, 3)`` -> (2, 3)."""
    if value is None:
        return None
    if isinstance(value, str):
        low, _, high = value.partition("-")
        return int(low), int(high or low)
    if isinstance(value, Sequence):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def query_materials_project(
    *,
    api_key: str | None = None,
    endpoint: str | None = None,
    elements: Sequence[str] | str | None = None,
    exclude_elements: Sequence[str] | str | None = None,
    chemsys: Sequence[str] | str | None = None,
    num_elements: int | tuple[int, int] | str | None = None,
    max_sites: int | None = None,
    material_ids: Sequence[str] | str | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Summary documents (plain dicts) matching the query, via ``mp_api.client.MPRester``."""
    key = api_key or os.environ.get("MP_API_KEY")
    if not key:
        raise UsageError("the materials-project dataset needs an API key: set MP_API_KEY (or pass api_key=)")
    if limit is not None and int(limit) <= 0:
        raise UsageError(f"limit must be positive, got {limit}")
    criteria: dict[str, Any] = {}
    if (value := _as_list(elements)) is not None:
        criteria["elements"] = value
    if (value := _as_list(exclude_elements)) is not None:
        criteria["exclude_elements"] = value
    if (value := _as_list(chemsys)) is not None:
        criteria["chemsys"] = value
    if (value := _as_list(material_ids)) is not None:
        criteria["material_ids"] = value
    if (span := _as_range(num_elements)) is not None:
        criteria["num_elements"] = span
    if max_sites is not None:
        criteria["num_sites"] = (1, int(max_sites))
    if not criteria:
        raise UsageError(
            "a materials-project query needs at least one filter: "
            "elements, exclude_elements, chemsys, num_elements, max_sites or material_ids"
        )
    chunk_size = min(int(limit), 1000) if limit else 1000
    num_chunks = math.ceil(int(limit) / chunk_size) if limit else None
    try:
        from mp_api.client import MPRester
        from mp_api.client.core import MPRestError
    except ImportError as err:  # pragma: no cover - mp-api is a declared dependency
        raise MatcardError(f"mp-api is not installed: {err}") from err
    import requests

    endpoint = endpoint or os.environ.get("MP_API_ENDPOINT") or None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # client/server version notices are not actionable here
            with MPRester(
                api_key=key,
                endpoint=endpoint,
                use_document_model=False,
                mute_progress_bars=not progress,
            ) as rester:
                documents = rester.materials.summary.search(
                    **criteria, fields=SUMMARY_FIELDS, chunk_size=chunk_size, num_chunks=num_chunks
                )
    except (MPRestError, requests.RequestException, OSError, ValueError) as err:
        raise MatcardError(f"Materials Project query failed: {err}") from err
    documents = [dict(d) for d in documents]
    return documents[: int(limit)] if limit else documents


def load_materials_project(spec: DatasetSpec, *, progress: bool = True, **query: Any) -> Any:
    """A Dataset from a live query (see module docstring)."""
    import pandas as pd
    from pymatgen.core import Structure

    from matcard.datasets.dataset import Dataset, reduced_formulas

    unknown = sorted(set(query) - {*QUERY_OPTIONS, "api_key", "endpoint"})
    if unknown:
        raise UsageError(
            f"unknown materials-project query option(s) {unknown}; options: {', '.join(QUERY_OPTIONS)}"
        )
    documents = query_materials_project(progress=progress, **query)
    rows: list[dict[str, Any]] = []
    structures: list[Structure] = []
    failures: list[ReadFailure] = []
    for doc in documents:
        material_id = str(doc.get("material_id"))
        try:
            structure = doc["structure"]
            structure = structure if isinstance(structure, Structure) else Structure.from_dict(structure)
            symmetry = doc.get("symmetry") or {}
            number = (
                symmetry.get("number") if isinstance(symmetry, dict) else getattr(symmetry, "number", None)
            )
            rows.append(
                {
                    "id": material_id,
                    "spacegroup.number": int(number) if number is not None else None,
                    "band_gap": doc.get("band_gap"),
                    "is_metal": doc.get("is_metal"),
                    "ordering": str(doc.get("ordering") or "Unknown"),
                    "formula_pretty": doc.get("formula_pretty"),
                    "e_above_hull": doc.get("energy_above_hull"),
                }
            )
            structures.append(structure)
        except Exception as err:  # one malformed document never sinks the query
            failures.append(ReadFailure(f"materials-project#{material_id}", f"bad document: {err}"))
    table = pd.DataFrame(
        rows,
        columns=[
            "id",
            "spacegroup.number",
            "band_gap",
            "is_metal",
            "ordering",
            "formula_pretty",
            "e_above_hull",
        ],
    )
    table["reduced_formula"] = reduced_formulas(structures)
    return Dataset(
        spec.name,
        spec.kind,
        table,
        tasks=spec.tasks,
        store=StructureStore.from_structures(structures),
        failures=failures,
        spec=spec,
        default_task=spec.default_task,
        source=query.get("endpoint")
        or os.environ.get("MP_API_ENDPOINT")
        or "https://api.materialsproject.org",
    )


__all__ = ["QUERY_OPTIONS", "SUMMARY_FIELDS", "load_materials_project", "query_materials_project"]
