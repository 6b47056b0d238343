"""What a table cell holds: CIF text, a POSCAR, or a pymatgen Structure dict (JSON or Python repr).

Published tables store structures in all of these ways: a plain ``cif`` column, matminer's
``structure`` column as a Structure dict serialised to JSON, or (matminer's dielectric_constant) a
``meta`` column holding a Python-repr dict whose ``structure`` entry is the CIF. Python reprs are
read with ``ast.literal_eval`` (literals only), never ``eval``.
"""

from __future__ import annotations

import ast
import json
from typing import Any

# (kind, text) where kind is an _Item kind: "cif_text" | "poscar_text" | "structure_dict" (JSON text)
CellContent = tuple[str, str]
_NESTED_KEYS = ("structure", "final_structure", "cif", "initial_structure")


def _is_structure_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and "lattice" in obj and "sites" in obj


def _looks_like_cif(text: str) -> bool:
    lowered = text.lower()
    return "_cell_length_a" in lowered and (
        "_atom_site_fract_x" in lowered or "_atom_site_cartn_x" in lowered
    )


def _load_mapping(text: str) -> Any:
    """A JSON object or a Python-repr literal (matminer's Python 2 ``{u'key': u'...'}``), else None."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None


def _from_object(obj: Any, depth: int = 0) -> CellContent | None:
    if _is_structure_dict(obj):
        return "structure_dict", json.dumps(obj)
    if isinstance(obj, str):
        return cell_content(obj, depth + 1)
    if isinstance(obj, dict) and depth < 2:
        for key in _NESTED_KEYS:
            if key in obj:
                found = _from_object(obj[key], depth + 1)
                if found is not None:
                    return found
    return None


def cell_content(value: Any, depth: int = 0, *, poscar: bool = False) -> CellContent | None:
    """The structure a cell holds as (item kind, text), or None when it holds none.

    ``poscar``: the column is known to hold POSCAR text (named ``poscar``), which has no marker to sniff.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return _from_object(value, depth) if isinstance(value, dict) else None
    text = value.strip()
    if not text:
        return None
    if text[0] in "{[" and depth < 2:
        loaded = _load_mapping(text)
        if loaded is not None:
            return _from_object(loaded, depth)
    if _looks_like_cif(text):
        return "cif_text", value
    if poscar:
        return "poscar_text", value
    return None
