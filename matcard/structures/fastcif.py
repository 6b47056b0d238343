"""Fast CIF path: gemmi reads the text, NumPy expands the symmetry; no pymatgen objects are built.

``parse_cif_compact(text)`` returns the structure as flat arrays (:class:`CompactStructure`) and
``parse_cif_fast(text)`` the ``Structure`` built from them: the structure pymatgen's
``CifParser(...).parse_structures(primitive=False)`` would return (same lattice, species, fractional
coordinates, labels and site order) plus the parser warnings pymatgen would record, or ``None`` when
the file is outside what this path reproduces exactly. The caller then parses with pymatgen, so
flags and failures never depend on the path taken. Accepted: one data block whose tags are all in a
known list (no magnetic, oxidation-state, attached-hydrogen or other tags pymatgen acts on),
explicit symmetry operations in a loop, plain element type symbols, every occupancy exactly 1, no
two sites on one position, a cell thicker than pymatgen's 0.01 Å guard, and a formula tag that
agrees with the sites. Everything else falls back.

The reference path can be forced with ``MATCARD_CIF_PARSER=pymatgen`` (or ``cif_parser="pymatgen"``).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import warnings
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from matcard.errors import UsageError
from matcard.structures.compact import CompactStructure, _symbols

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

CIF_PARSERS: tuple[str, ...] = ("fast", "pymatgen")
CIF_PARSER_ENV = "MATCARD_CIF_PARSER"

# Tags pymatgen reads (or ignores) without changing the structure or warning; anything else falls back.
_PAIR_TAGS = frozenset(
    {
        "_symmetry_space_group_name_H-M",
        "_symmetry_space_group_name_Hall",
        "_space_group_name_H-M_alt",
        "_space_group_name_Hall",
        "_symmetry_Int_Tables_number",
        "_space_group_IT_number",
        "_symmetry_cell_setting",
        "_space_group_crystal_system",
        "_cell_length_a",
        "_cell_length_b",
        "_cell_length_c",
        "_cell_angle_alpha",
        "_cell_angle_beta",
        "_cell_angle_gamma",
        "_cell_volume",
        "_cell_formula_units_Z",
        "_chemical_formula_structural",
        "_chemical_formula_sum",
        "_chemical_formula_weight",
        "_chemical_name_systematic",
        "_chemical_name_common",
        "_chemical_name_mineral",
        "_chemical_name_structure_type",
    }
)
# Bibliographic and experimental metadata: text pymatgen never looks at.
_METADATA_PREFIXES = (
    "_journal_",
    "_publ_",
    "_audit_",
    "_database_",
    "_citation_",
    "_computing_",
    "_refine_",
    "_diffrn_",
    "_exptl_",
    "_cod_",
    "_cell_measurement_",
)
_SYMOP_TAGS = ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz")
_SYMOP_LOOP_TAGS = frozenset({*_SYMOP_TAGS, "_symmetry_equiv_pos_site_id", "_space_group_symop_id"})
_REQUIRED_SITE_TAGS = (
    "_atom_site_label",
    "_atom_site_type_symbol",
    "_atom_site_fract_x",
    "_atom_site_fract_y",
    "_atom_site_fract_z",
)
_SITE_TAGS = frozenset(
    {
        *_REQUIRED_SITE_TAGS,
        "_atom_site_occupancy",
        "_atom_site_symmetry_multiplicity",
        "_atom_site_Wyckoff_symbol",
        "_atom_site_U_iso_or_equiv",
        "_atom_site_B_iso_or_equiv",
        "_atom_site_adp_type",
        "_atom_site_calc_flag",
        "_atom_site_thermal_displace_type",
    }
)
_ELEMENT_FORM = re.compile(r"[A-Z][a-z]?")
_UNCERTAINTY = re.compile(r"\(.+\)*")  # the same pattern pymatgen's str2float strips
_IDEAL_FRACS = (1 / 3, 2 / 3)
_FRAC_TOLERANCE = 1e-4  # CifParser's default frac_tolerance
_MIN_THICKNESS = 0.01  # Å, CifParser's guard against flat cells
_COMP_TOL = 0.01  # CifParser's default stoichiometry tolerance


class _Fallback(Exception):
    """The file is outside what the fast path reproduces exactly."""


def resolve_cif_parser(value: str | None = None) -> str:
    """``value``, else ``MATCARD_CIF_PARSER``, else "fast"; anything else is a UsageError."""
    chosen = (value or os.environ.get(CIF_PARSER_ENV) or "fast").strip().lower()
    if chosen not in CIF_PARSERS:
        raise UsageError(f"CIF parser must be one of {', '.join(CIF_PARSERS)}, got {chosen!r}")
    return chosen


def parse_cif_fast(text: str, *, site_tolerance: float = 1e-4) -> tuple[Structure, list[str]] | None:
    """(structure, pymatgen's parser warnings) for a CIF this path reproduces exactly, else None."""
    parsed = parse_cif_compact(text, site_tolerance=site_tolerance)
    return None if parsed is None else (parsed[0].to_structure(), parsed[1])


def parse_cif_compact(
    text: str, *, site_tolerance: float = 1e-4
) -> tuple[CompactStructure, list[str]] | None:
    """:func:`parse_cif_fast` without building the Structure: the arrays it would be built from."""
    try:
        return _parse(text, site_tolerance)
    except _Fallback:
        return None
    except Exception:  # gemmi syntax errors and anything unforeseen: the reference path decides
        return None


def _str2float(text: str) -> float:
    """pymatgen's str2float: uncertainty brackets stripped, "." read as 0; unreadable text falls back."""
    try:  # the common case first: float() never accepts "(", so stripping could not change its value
        return float(text)
    except ValueError:
        pass
    if text.strip() == ".":
        return 0.0
    try:
        return float(_UNCERTAINTY.sub("", text))
    except ValueError as err:
        raise _Fallback from err


def _parse(text: str, site_tolerance: float) -> tuple[CompactStructure, list[str]]:
    import gemmi

    doc = gemmi.cif.read_string(text)
    if len(doc) != 1:
        raise _Fallback
    pairs, loops = _block_items(doc[0])
    sites = loops.get("sites")
    symops = loops.get("symops")
    if sites is None or symops is None:
        raise _Fallback
    lattice = _lattice(pairs)
    rotations, translations = _symmetry_operations(tuple(symops))
    symbols, labels, columns, n_rounded = _asymmetric_sites(sites)
    coords = np.array(columns).T
    structure = None
    if _is_identity_only(rotations, translations):  # P1 (every MP-derived CIF): no images to merge
        structure = _p1_structure(lattice, symbols, labels, columns, coords, site_tolerance)
    if structure is None:
        _refuse_shared_positions(coords, rotations, translations, site_tolerance)
        species, frac, labels = _expand(symbols, labels, coords, rotations, translations, site_tolerance)
        structure = _ordered(lattice, species, frac, labels)
    _check_formula(pairs, structure.numbers.tolist())
    messages = []
    if n_rounded:  # the very message pymatgen records, so the flag is the same
        messages.append(
            f"{n_rounded} fractional coordinates rounded to ideal values to avoid issues with "
            "finite precision."
        )
    return structure, messages


def _block_items(block: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """Whitelisted pairs (raw values) and the atom-site / symmetry-operation loops of one block."""
    pairs: dict[str, str] = {}
    loops: dict[str, Any] = {}
    for item in block:
        pair = item.pair
        if pair is not None:
            tag = pair[0]
            if tag in _PAIR_TAGS:
                pairs[tag] = pair[1]
            elif tag in _SYMOP_TAGS or not tag.startswith(_METADATA_PREFIXES):
                raise _Fallback  # an unknown tag, or a one-line symmetry operation (pymatgen warns)
            continue
        loop = item.loop
        if loop is not None:
            tags = tuple(loop.tags)
            kind = _loop_kind(tags)
            if kind is None:
                continue
            if kind in loops:
                raise _Fallback
            width, values = len(tags), _unquoted(loop.values)
            if kind == "symops":
                loops[kind] = values[tags.index(_symop_tag(tags)) :: width]
            else:
                loops[kind] = {tag: values[i::width] for i, tag in enumerate(tags)}
        elif item.frame is not None:  # save frames: not something pymatgen reads the same way
            raise _Fallback
    return pairs, loops


@lru_cache(maxsize=256)
def _loop_kind(tags: tuple[str, ...]) -> str | None:
    """ "sites", "symops", None for a loop pymatgen ignores; anything else falls back."""
    if set(tags) <= _SITE_TAGS and all(t in tags for t in _REQUIRED_SITE_TAGS):
        return "sites"
    if set(tags) <= _SYMOP_LOOP_TAGS and sum(t in tags for t in _SYMOP_TAGS) == 1:
        return "symops"
    if all(t.startswith(("_atom_site_aniso_", *_METADATA_PREFIXES)) for t in tags):
        return None
    raise _Fallback


def _symop_tag(tags: tuple[str, ...]) -> str:
    return next(t for t in _SYMOP_TAGS if t in tags)


_QUOTING = re.compile(r"['\";]")


def _unquoted(values: list[str]) -> list[str]:
    """``gemmi.cif.as_string`` of every raw value: quotes and text fields undone, "?" and "." read
    as "". Values that need none of that (numbers, symbols, labels) are returned as they are, found
    with one scan of the joined text instead of a Python call per value."""
    if "?" in values or "." in values or _QUOTING.search("".join(values)):
        import gemmi

        return [gemmi.cif.as_string(v) for v in values]
    return values


def _floats(values: list[str]) -> list[float]:
    """:func:`_str2float` of every value; ``float`` over the whole list first (its fast path)."""
    try:
        return list(map(float, values))
    except ValueError:
        return [_str2float(v) for v in values]


def _lattice(pairs: dict[str, str]) -> np.ndarray:
    """The lattice matrix ``Lattice.from_parameters`` gives, computed here with the same operations in
    the same order (so the same floats) without building a Lattice; flat cells fall back."""
    try:
        a, b, c = (_str2float(pairs[f"_cell_length_{k}"]) for k in "abc")
        angles = tuple(_str2float(pairs[f"_cell_angle_{k}"]) for k in ("alpha", "beta", "gamma"))
    except KeyError as err:
        raise _Fallback from err
    rows = _rows_from_parameters(a, b, c, angles)  # type: ignore[arg-type]
    if not _thicker_than(rows, 1.1 * _MIN_THICKNESS):  # margin: near the guard, pymatgen decides
        raise _Fallback
    return np.array(rows, dtype=np.float64)


def _thicker_than(rows: list[list[float]], limit: float) -> bool:
    """Every interplanar spacing of (100), (010), (001), volume / |cross of the other two rows|,
    above ``limit``; non-finite cells are not. Plain floats: a few microseconds, where inverting the
    matrix with NumPy costs tens (the margin makes rounding differences irrelevant)."""
    crosses = []
    for i in range(3):
        (u0, u1, u2), (v0, v1, v2) = rows[(i + 1) % 3], rows[(i + 2) % 3]
        crosses.append((u1 * v2 - u2 * v1, u2 * v0 - u0 * v2, u0 * v1 - u1 * v0))
    volume = abs(sum(x * y for x, y in zip(rows[0], crosses[0], strict=True)))
    for cx, cy, cz in crosses:
        norm = math.sqrt(cx * cx + cy * cy + cz * cz)
        if not (norm > 0 and volume / norm > limit):  # written so that NaN fails too
            return False
    return True


def _rows_from_parameters(
    a: float, b: float, c: float, angles: tuple[float, float, float]
) -> list[list[float]]:
    """Lattice rows from lengths and angles (degrees), c along z: pymatgen's (non-VESTA) convention,
    as Python floats. The arithmetic on Python floats rounds exactly as on NumPy scalars, at a
    fraction of the cost."""
    cos_alpha, cos_beta, sin_alpha, sin_beta, cos_gamma_star, sin_gamma_star = _angle_terms(angles)
    return [
        [a * sin_beta, 0.0, a * cos_beta],
        [-b * sin_alpha * cos_gamma_star, b * sin_alpha * sin_gamma_star, b * cos_alpha],
        [0.0, 0.0, float(c)],
    ]


@lru_cache(maxsize=256)
def _angle_terms(angles: tuple[float, float, float]) -> tuple[float, ...]:
    """The cosines and sines ``Lattice.from_parameters`` takes of the angles (degrees), as NumPy's
    vectorised functions give them (a scalar ``math.cos`` may differ in the last bit); np.radians is
    the same product by pi / 180. Cached: four MP cells in ten share one of a few angle triples."""
    radians = np.array([angle * _DEGREE for angle in angles])
    cos_alpha, cos_beta, cos_gamma = np.cos(radians).tolist()
    sin_alpha, sin_beta, _ = np.sin(radians).tolist()
    # min/max clip as np.clip does (NaN passes through)
    gamma_star = np.arccos(min(max((cos_alpha * cos_beta - cos_gamma) / (sin_alpha * sin_beta), -1.0), 1.0))
    return cos_alpha, cos_beta, sin_alpha, sin_beta, float(np.cos(gamma_star)), float(np.sin(gamma_star))


_DEGREE = math.pi / 180.0  # numpy's deg2rad factor


@lru_cache(maxsize=512)
def _symmetry_operations(xyz: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Rotation [n, 3, 3] and translation [n, 3] arrays, parsed by pymatgen (cached: few distinct sets)."""
    from pymatgen.core.operations import SymmOp

    if not xyz:
        raise _Fallback
    try:
        affine = np.array([SymmOp.from_xyz_str(s.strip()).affine_matrix for s in xyz])
    except ValueError as err:
        raise _Fallback from err
    return affine[:, :3, :3].copy(), affine[:, :3, 3].copy()


@lru_cache(maxsize=512)
def _plain_element(symbol: str) -> bool:
    from pymatgen.core import Element

    return bool(_ELEMENT_FORM.fullmatch(symbol)) and Element.is_valid_symbol(symbol)


def _asymmetric_sites(
    columns: dict[str, list[str]],
) -> tuple[list[str], list[str], list[list[float]], int]:
    """Symbols, labels, the x, y, z coordinate columns (rounded as pymatgen's sanitiser rounds them)
    and the rounded count."""
    symbols = columns["_atom_site_type_symbol"]
    if not all(map(_plain_element, symbols)):
        raise _Fallback  # pymatgen would reinterpret the symbol (and warn)
    occupancies = columns.get("_atom_site_occupancy")
    if occupancies is not None and _floats(occupancies).count(1.0) != len(occupancies):
        raise _Fallback  # partial occupancy, or an unreadable one pymatgen would take as 1
    if not symbols:
        raise _Fallback
    axes = ("_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z")
    rounded = [_rounded_to_ideal(_floats(columns[tag])) for tag in axes]
    if not math.isfinite(sum(sum(values) for values, _ in rounded)):
        raise _Fallback  # NaN or inf coordinates (or sums beyond float range): pymatgen decides
    n_rounded = sum(count for _, count in rounded)
    return list(symbols), list(columns["_atom_site_label"]), [values for values, _ in rounded], n_rounded


_ROUNDING = tuple((ideal, float(str(ideal))) for ideal in _IDEAL_FRACS)


def _rounded_to_ideal(values: list[float]) -> tuple[list[float], int]:
    """Values within ``_FRAC_TOLERANCE`` (relative) of 1/3 or 2/3 set to it, as pymatgen's sanitiser
    does (``math.isclose(v / ideal, 1, abs_tol=tol, rel_tol=0)``, 1/3 first), and how many were."""
    count = 0
    for index, value in enumerate(values):
        if 0.3332 < value < 0.3335 or 0.6665 < value < 0.6668:  # cheap bracket around both windows
            for ideal, exact in _ROUNDING:
                if abs(value / ideal - 1) <= _FRAC_TOLERANCE:
                    value = exact
                    count += 1
            values[index] = value
    return values, count


def _pbc_close(a: np.ndarray, b: np.ndarray, atol: float) -> np.ndarray:
    """pymatgen's find_in_coord_list_pbc test, broadcast: |d - round(d)| < atol on every axis
    (as the largest |d - round(d)|: one reduction fewer; NaN is never close either way)."""
    diff = a - b
    diff -= diff.round()
    return np.abs(diff).max(axis=-1) < atol


def _listed_sites_coincide(coords: np.ndarray, atol: float) -> bool:
    """Two listed sites on one position (P1: each site is its own only image). The pair test is
    symmetric and true on the diagonal, so more than n close pairs means two distinct sites."""
    return len(coords) > 1 and np.count_nonzero(_pbc_close(coords[:, None], coords[None], atol)) > len(coords)


def _columns_coincide(columns: list[list[float]], coords: np.ndarray, atol: float) -> bool:
    """:func:`_listed_sites_coincide`, deciding most files without the n x n broadcast (about twice
    its cost for MP-sized cells). Two sites can only be close if their coordinates along each axis
    lie within ``atol`` of each other (modulo 1), so candidates come from sorting along one axis (x,
    else y or z when x leaves too many), and only those pairs are tested, with the same arithmetic
    as :func:`_pbc_close`. Cells crowded on every axis go to the broadcast test. Coordinates are finite."""
    n = len(columns[0])
    if n < 2:
        return False
    for axis in columns:
        pairs = _candidate_pairs(axis, atol)
        if pairs is None:
            continue
        for i, j in pairs:
            for column in columns:
                d = column[i] - column[j]
                if not abs(d - round(d)) < atol:  # numpy rounds half to even too
                    break
            else:
                return True
        return False
    return _listed_sites_coincide(coords, atol)


def _candidate_pairs(values: list[float], atol: float) -> list[tuple[int, int]] | None:
    """Pairs of sites whose ``values`` lie within ``atol`` of each other modulo 1 (a superset: the
    margin covers rounding), or None when there are more than two per site or values beyond 1e3."""
    if max(values) > 1e3 or min(values) < -1e3:  # the margin below covers moderate values only
        return None
    wrapped = [value % 1.0 for value in values]  # in [0, 1]: exact, or 1.0 for a tiny negative
    order = sorted(range(len(values)), key=wrapped.__getitem__)
    ordered = [wrapped[i] for i in order]
    limit = atol + 1e-9
    near = [k for k in range(len(order) - 1) if ordered[k + 1] - ordered[k] < limit]
    across = ordered[0] + 1.0 - ordered[-1] < limit  # the gap from the last site around to the first
    if not near and not across:
        return []
    pairs = [pair for members in _runs(order, near, across) for pair in itertools.combinations(members, 2)]
    return pairs if len(pairs) <= 2 * len(values) else None


def _runs(order: list[int], near: list[int], across: bool) -> list[list[int]]:
    """Groups of two or more sites (indices) joined by the near gaps ``near`` (position k: between
    ``order[k]`` and ``order[k + 1]``), and by the gap across 1 -> 0 when ``across``."""
    runs: list[list[int]] = []
    for k in near:
        if runs and runs[-1][-1] == order[k]:
            runs[-1].append(order[k + 1])
        else:
            runs.append([order[k], order[k + 1]])
    if across:
        first, last = order[0], order[-1]
        head = runs.pop(0) if runs and runs[0][0] == first else [first]
        if head[-1] == last:  # one run through every site already
            runs.append(head)
        else:
            tail = runs.pop() if runs and runs[-1][-1] == last else [last]
            runs.append(tail + head)
    return runs


def _refuse_shared_positions(
    coords: np.ndarray, rotations: np.ndarray, translations: np.ndarray, atol: float
) -> None:
    """Two listed sites on one position (under the symmetry) are merged by pymatgen: disorder, fall back."""
    n = len(coords)
    if n < 2:
        return
    if _is_identity_only(rotations, translations):  # P1: a plain pairwise test
        if _listed_sites_coincide(coords, atol):
            raise _Fallback
        return
    images = np.einsum("oij,nj->oni", rotations, coords) + translations[:, None, :]  # [ops, n, 3]
    close = _pbc_close(images[:, :, None, :], coords[None, None, :, :], atol)  # [ops, n(new), n(old)]
    rows, cols = _lower_triangle(n)
    if close[:, rows, cols].any():
        raise _Fallback


_IDENTITY = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def _is_identity_only(rotations: np.ndarray, translations: np.ndarray) -> bool:
    # plain lists: comparing through NumPy (np.eye, .all) costs more than the P1 work it saves
    return (
        len(rotations) == 1
        and translations[0].tolist() == [0.0, 0.0, 0.0]
        and (rotations[0].tolist() == _IDENTITY)
    )


def _p1_structure(
    lattice: np.ndarray,
    symbols: list[str],
    labels: list[str],
    columns: list[list[float]],
    coords: np.ndarray,
    atol: float,
) -> CompactStructure | None:
    """The structure of a P1 file, the result :func:`_expand` and :func:`_ordered` give, in one pass;
    None when a symbol has no electronegativity (noble gases: their order is not a total order, so
    the general route reproduces pymatgen's sorts step by step).

    With one identity operation every site is its own only image, so pymatgen's grouping by species
    and its stable electronegativity sort reduce to one stable sort of the listed sites by element.
    """
    ranks = _element_ranks()
    try:
        keys = [ranks[symbol] for symbol in symbols]
    except KeyError:
        return None
    if _columns_coincide(columns, coords, atol):  # pymatgen would merge them (disorder)
        raise _Fallback
    numbers = _atomic_numbers()
    zs = [numbers[symbol] for symbol in symbols]
    if all(a <= b for a, b in itertools.pairwise(keys)):  # already pymatgen's order (its own CIFs)
        frac, site_labels = np.ascontiguousarray(coords), tuple(labels)
    else:
        order = sorted(range(len(symbols)), key=keys.__getitem__)
        frac, site_labels = coords[order], tuple([labels[i] for i in order])
        zs = [zs[i] for i in order]
    return CompactStructure(
        lattice=lattice,
        frac_coords=frac - np.floor(frac),
        numbers=np.array(zs, dtype=np.int64),
        labels=site_labels,
    )


@lru_cache(maxsize=1)
def _element_ranks() -> dict[str, int]:
    """Each element's place in pymatgen's site order (electronegativity, then symbol); elements
    without an electronegativity are left out."""
    from pymatgen.core import Element

    keys = [_electronegativity(element.symbol) for element in Element]
    ordered = sorted(key for key in keys if not math.isnan(key[0]))
    return {symbol: rank for rank, (_, symbol) in enumerate(ordered)}


@lru_cache(maxsize=512)
def _lower_triangle(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.tril_indices(n, k=-1)


@lru_cache(maxsize=1024)
def _species_order(distinct: frozenset[str]) -> tuple[str, ...]:
    """Distinct symbols in the order pymatgen groups them (sorted as single-element Compositions)."""
    from pymatgen.core import Composition

    return tuple(str(next(iter(c))) for c in sorted(Composition({s: 1.0}) for s in sorted(distinct)))


def _expand(
    symbols: list[str],
    labels: list[str],
    coords: np.ndarray,
    rotations: np.ndarray,
    translations: np.ndarray,
    atol: float,
) -> tuple[list[str], np.ndarray, list[str]]:
    """Symmetry-expanded sites in pymatgen's order: species groups, then each site's images, deduplicated."""
    if _is_identity_only(rotations, translations):
        images = coords[:, None, :]  # x -> x: only the wrap below (exactly what the operation gives)
    else:
        images = np.einsum("oij,nj->noi", rotations, coords) + translations[None, :, :]  # [n, ops, 3]
    images = images - np.floor(images)
    order = _species_order(frozenset(symbols))
    if len(rotations) == 1:  # one image per site, all distinct: a stable sort by species group
        rank = {symbol: i for i, symbol in enumerate(order)}
        index = sorted(range(len(symbols)), key=lambda i: rank[symbols[i]])
        return [symbols[i] for i in index], images[index, 0], [labels[i] for i in index]
    species: list[str] = []
    frac: list[np.ndarray] = []
    out_labels: list[str] = []
    for symbol in order:
        members = [i for i, s in enumerate(symbols) if s == symbol]
        candidates = images[members].reshape(-1, 3)
        owners = np.repeat(members, len(rotations))
        close = _pbc_close(candidates[:, None, :], candidates[None, :, :], atol)
        accepted: list[int] = []
        for index in range(len(candidates)):  # pymatgen's greedy order: first image kept
            if not accepted or not close[index, accepted].any():
                accepted.append(index)
        kept = np.array(accepted)
        species.extend([symbol] * len(kept))
        frac.append(candidates[kept])
        out_labels.extend(labels[owners[k]] for k in kept)
    return species, np.concatenate(frac), out_labels


_SIMPLE_FORMULA = re.compile(r"(?:\s*[A-Z][a-z]?(?:[1-9]\d*(?:\.\d+)?)?)+\s*")
_FORMULA_TERM = re.compile(r"([A-Z][a-z]?)([1-9]\d*(?:\.\d+)?)?")


def _formula_amounts(formula: str) -> dict[str, float] | None:
    """The element amounts pymatgen's Composition reads from ``formula`` (None if it cannot).

    A formula of plain terms ("Ga4 Te4", "TiO2": element symbols with optional positive amounts, no
    brackets, charges or zero amounts) is summed here, as Composition sums it; anything else goes
    through Composition (each MP formula is distinct, and a Composition costs ~70 microseconds).
    """
    if _SIMPLE_FORMULA.fullmatch(formula):
        amounts: dict[str, float] = {}
        for symbol, amount in _FORMULA_TERM.findall(formula):
            if not _plain_element(symbol):
                return _composition_amounts(formula)
            amounts[symbol] = amounts.get(symbol, 0.0) + (float(amount) if amount else 1.0)
        return amounts
    return _composition_amounts(formula)


@lru_cache(maxsize=4096)
def _composition_amounts(formula: str) -> dict[str, float] | None:
    from pymatgen.core import Composition

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {str(k): v for k, v in Composition(formula).remove_charges().as_dict().items()}
    except Exception:
        return None


def _check_formula(pairs: dict[str, str], numbers: list[int]) -> None:
    """pymatgen compares the formula tag with the sites (atomic numbers) and warns on a mismatch:
    fall back if it would."""
    import gemmi

    symbol_of = _symbols()

    raw = next(
        (pairs[k] for k in ("_chemical_formula_sum", "_chemical_formula_structural") if k in pairs), None
    )
    if raw is None:
        return  # pymatgen skips the stoichiometry check (a benign notice); the element check still runs
    formula = gemmi.cif.as_string(raw)
    if not formula or raw in {"?", "."}:
        raise _Fallback
    expected = _formula_amounts(formula)
    if expected is None:
        raise _Fallback
    found: dict[str, float] = {}
    for number in numbers:
        symbol = symbol_of[number]
        found[symbol] = found.get(symbol, 0.0) + 1.0
    if found == expected:  # every amount equal: pymatgen's differences are all 0, no warning
        return
    if set(expected) != set(found):
        raise _Fallback
    ratios = [found[e] / expected[e] for e in expected]
    if max(ratios) - min(ratios) >= _COMP_TOL:
        raise _Fallback


def _ordered(
    lattice: np.ndarray, species: list[str], frac: np.ndarray, labels: list[str]
) -> CompactStructure:
    """The sites in pymatgen's final order: get_sorted_structure's stable electronegativity sort."""
    keys = {symbol: _SiteKey(*_electronegativity(symbol)) for symbol in set(species)}
    order = sorted(range(len(species)), key=lambda i: keys[species[i]])
    numbers = _atomic_numbers()
    return CompactStructure(
        lattice=lattice,
        frac_coords=np.ascontiguousarray(frac[order]),
        numbers=np.array([numbers[species[i]] for i in order], dtype=np.int64),
        labels=tuple(labels[i] for i in order),
    )


@lru_cache(maxsize=1)
def _atomic_numbers() -> dict[str, int]:
    from pymatgen.core import Element

    return {element.symbol: element.Z for element in Element}


@lru_cache(maxsize=256)
def _electronegativity(symbol: str) -> tuple[float, str]:
    from pymatgen.core import Element

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # noble gases: NaN, as in pymatgen's own sort
        return float(Element(symbol).X), symbol


class _SiteKey:
    """Site.__lt__ (average electronegativity, then species string), NaN behaviour included."""

    __slots__ = ("en", "name")

    def __init__(self, en: float, name: str) -> None:
        self.en, self.name = en, name

    def __lt__(self, other: _SiteKey) -> bool:
        if self.en < other.en:
            return True
        if self.en > other.en:
            return False
        return self.name < other.name
