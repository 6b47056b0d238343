"""Per-format parsers (POSCAR, extxyz, pymatgen JSON, ASE db) and the work-item dispatch."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matcard.structures.cells import cell_content
from matcard.structures.checks import _finish
from matcard.structures.cif import _parse_cif_text
from matcard.structures.formats import _read_text
from matcard.structures.reasons import plain_reason
from matcard.structures.records import Outcome, ReadFailure, _Item, _Options

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure


def _parse_poscar_text(
    text: str,
    item_id: str,
    source: str,
    label: object | None,
    options: _Options,
    properties: dict | None,
    path: str | None = None,
) -> list[Outcome]:
    from pymatgen.io.vasp import Poscar

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if path is not None and (Path(path).parent / "POTCAR").is_file():
            # A VASP 4 POSCAR names no species; pymatgen takes them from the POTCAR beside it.
            structure = Poscar.from_file(path, check_for_potcar=True, read_velocities=False).structure
        else:
            structure = Poscar.from_str(text, read_velocities=False).structure
    messages = tuple(" ".join(str(w.message).split())[:200] for w in caught)
    if any("Elements in POSCAR cannot be determined" in m for m in messages):
        # pymatgen would invent H, He, ... for the species: refuse rather than pass on fake data.
        return [ReadFailure(source, "no species in POSCAR (VASP 4 format without a POTCAR beside it)")]
    flags = ("poscar_warning",) if messages else ()
    return [_finish(structure, item_id, source, label, options, flags, messages, properties)]


def _parse_xyz(
    path: str, item_id: str, source: str, label: object | None, options: _Options
) -> list[Outcome]:
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = ase.io.read(path, index=":", format="extxyz")
    outcomes: list[Outcome] = []
    multi = len(frames) > 1
    for index, atoms in enumerate(frames):
        frame_source = f"{source}#{index}" if multi else source
        frame_id = f"{item_id}:{index}" if multi else item_id
        if not atoms.pbc.any() or atoms.cell.volume < 1e-3:
            outcomes.append(ReadFailure(frame_source, "no periodic cell (xyz frame without Lattice)"))
            continue
        info = {k: v for k, v in atoms.info.items() if isinstance(v, str | int | float | bool)}
        frame_label = info.pop("label", label)
        structure = AseAtomsAdaptor.get_structure(atoms)
        outcomes.append(_finish(structure, frame_id, frame_source, frame_label, options, properties=info))
    if not outcomes:
        outcomes.append(ReadFailure(source, "no frames in xyz file"))
    return outcomes


def _structure_from_obj(obj: Any) -> Structure | None:
    """A Structure from a pymatgen dict (Structure, StructureNL, entry) or None."""
    from pymatgen.core import Structure

    if not isinstance(obj, dict):
        return None
    if "lattice" in obj and "sites" in obj:
        return Structure.from_dict(obj)
    for key in ("structure", "final_structure"):
        inner = obj.get(key)
        if isinstance(inner, dict) and "lattice" in inner and "sites" in inner:
            return Structure.from_dict(inner)
    return None


def _json_entries(data: Any, stem: str) -> list[tuple[str, Any]]:
    """(id, object) pairs in a pymatgen JSON document."""
    if isinstance(data, list):
        pairs = []
        for index, obj in enumerate(data):
            obj_id = None
            if isinstance(obj, dict):
                for key in ("material_id", "id", "task_id", "name"):
                    if isinstance(obj.get(key), str | int):
                        obj_id = str(obj[key])
                        break
            pairs.append((obj_id or f"{stem}:{index}", obj))
        return pairs
    if isinstance(data, dict):
        if _structure_from_obj(data) is not None or "@class" in data:
            return [(stem, data)]
        if data and all(isinstance(v, dict) for v in data.values()):
            return [(str(k), v) for k, v in data.items()]
    return [(stem, data)]


def _parse_json(
    path: str, item_id: str, source: str, label: object | None, options: _Options
) -> list[Outcome]:
    text, encoding_flags = _read_text(path)
    data = json.loads(text)
    if isinstance(data, dict) and "ids" in data and "nextid" in data:  # an ASE JSON database
        return _read_ase_db(path, options)
    pairs = _json_entries(data, item_id)
    multi = len(pairs) > 1
    outcomes: list[Outcome] = []
    for obj_id, obj in pairs:
        entry_source = f"{source}#{obj_id}" if multi else source
        try:
            structure = _structure_from_obj(obj)
        except Exception as err:
            outcomes.append(ReadFailure(entry_source, *plain_reason(err)))
            continue
        if structure is None:
            outcomes.append(ReadFailure(entry_source, "not a pymatgen Structure dict"))
            continue
        entry_label = obj.get("label", label) if isinstance(obj, dict) else label
        outcomes.append(_finish(structure, obj_id, entry_source, entry_label, options, encoding_flags))
    return outcomes


def _read_ase_db(path: str, options: _Options) -> list[Outcome]:
    import ase.db
    from pymatgen.io.ase import AseAtomsAdaptor

    outcomes: list[Outcome] = []
    db = ase.db.connect(path)
    with db:
        for row in db.select():
            source = f"{path}#id={row.id}"
            key_values = dict(row.key_value_pairs)
            row_id = str(key_values.get("material_id", key_values.get("name", row.id)))
            try:
                atoms = row.toatoms()
                if not atoms.pbc.any() or atoms.cell.volume < 1e-3:
                    outcomes.append(ReadFailure(source, "no periodic cell (non-periodic row)"))
                    continue
                structure = AseAtomsAdaptor.get_structure(atoms)
            except Exception as err:
                outcomes.append(ReadFailure(source, *plain_reason(err)))
                continue
            label = key_values.pop("label", None)
            outcomes.append(_finish(structure, row_id, source, label, options, properties=key_values))
    return outcomes


def _parse_item(item: _Item, options: _Options) -> list[Outcome]:
    """Parse one work item into records / failures; never raises."""
    item_id = item.id or (Path(item.path).stem if item.path else "structure")
    properties = dict(item.properties)
    try:
        if item.kind == "cif":
            assert item.path is not None
            text, encoding = _read_text(item.path)
            return _parse_cif_text(text, item_id, item.source, item.label, options, encoding, properties)
        kind, text = item.kind, item.text
        if kind in {"cell", "cell_poscar"}:  # a table cell: find what it holds here, in the worker
            content = cell_content(text, poscar=kind == "cell_poscar")
            if content is None:
                return [ReadFailure(item.source, "the structure cell holds no CIF, POSCAR or Structure dict")]
            kind, text = content
        if kind == "cif_text":
            assert text is not None
            return _parse_cif_text(text, item_id, item.source, item.label, options, (), properties)
        if kind == "poscar":
            assert item.path is not None
            text, _ = _read_text(item.path)
            return _parse_poscar_text(text, item_id, item.source, item.label, options, properties, item.path)
        if kind == "poscar_text":
            assert text is not None
            return _parse_poscar_text(text, item_id, item.source, item.label, options, properties)
        if item.kind == "xyz":
            assert item.path is not None
            return _parse_xyz(item.path, item_id, item.source, item.label, options)
        if item.kind == "json":
            assert item.path is not None
            return _parse_json(item.path, item_id, item.source, item.label, options)
        if item.kind == "db":
            assert item.path is not None
            return _read_ase_db(item.path, options)
        if kind == "structure_dict":
            assert text is not None
            structure = _structure_from_obj(json.loads(text))
            if structure is None:
                return [ReadFailure(item.source, "not a pymatgen Structure dict")]
            return [_finish(structure, item_id, item.source, item.label, options, properties=properties)]
        return [ReadFailure(item.source, f"unsupported item kind {item.kind!r}")]
    except Exception as err:  # one bad file never aborts the batch
        return [ReadFailure(item.source, *plain_reason(err))]
