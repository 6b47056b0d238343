"""Checks every parsed structure passes: atoms, cell volume, the disorder policy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from matcard.structures.compact import CompactStructure
from matcard.structures.records import CompactRecord, Outcome, ReadFailure, StructureRecord, _Options

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure


# --------------------------------------------------------------------------------------------
# Disorder handling and validation (run in workers)
# --------------------------------------------------------------------------------------------
def _apply_disorder(structure: Structure, policy: str) -> tuple[Structure | None, tuple[str, ...]]:
    """Return (structure or None when skipped, flags) under the disorder policy."""
    if structure.is_ordered:
        return structure, ()
    if policy == "skip":
        return None, ()
    if policy == "keep":
        return structure, ("disordered_kept",)
    from pymatgen.core import Structure as PmgStructure

    species: list[Any] = []
    coords: list[Any] = []
    properties: dict[str, list[Any]] = {key: [] for key in structure.site_properties}
    for site in structure:
        items = sorted(site.species.items(), key=lambda kv: (-kv[1], str(kv[0])))
        best_species, best_occupancy = items[0]
        vacancy = 1.0 - site.species.num_atoms
        if vacancy > best_occupancy + 1e-8:  # the site is mostly empty
            continue
        species.append(best_species)
        coords.append(site.frac_coords)
        for key in properties:
            properties[key].append(site.properties.get(key))
    if not species:
        return None, ()
    majority = PmgStructure(
        structure.lattice, species, coords, site_properties=properties or None, coords_are_cartesian=False
    )
    if len(majority) > 1:
        majority.merge_sites(tol=0.5, mode="delete")
    return majority, ("majority_species",)


def _finish(
    structure: Structure | CompactStructure,
    item_id: str,
    source: str,
    label: object | None,
    options: _Options,
    flags: Sequence[str] = (),
    messages: Sequence[str] = (),
    properties: dict[str, Any] | None = None,
) -> Outcome:
    if len(structure) == 0:
        return ReadFailure(source, "no atomic sites")
    if structure.volume < 1e-3:
        return ReadFailure(source, f"degenerate cell (volume {structure.volume:.3g} Å^3)")
    # A CompactStructure answers len / volume / is_ordered as the Structure would: same checks, same
    # reasons, and the record keeps the arrays (ordered by construction, so no disorder policy applies).
    kept, disorder_flags = _apply_disorder(structure, options.disorder)  # type: ignore[arg-type]
    if kept is None:
        return ReadFailure(source, "disordered")
    kind = CompactRecord if isinstance(kept, CompactStructure) else StructureRecord
    return kind(
        id=item_id,
        source=source,
        structure=kept,
        label=label,
        flags=tuple(dict.fromkeys([*flags, *disorder_flags])),
        warnings=tuple(messages),
        properties=properties or {},
    )
