"""CIF parsing (multi-block files) and pymatgen warning -> data-quality flag mapping."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from matcard.structures.checks import _finish
from matcard.structures.compact import CompactStructure
from matcard.structures.fastcif import parse_cif_compact
from matcard.structures.reasons import plain_reason
from matcard.structures.records import Outcome, ReadFailure, _Options

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure


# --------------------------------------------------------------------------------------------
# Warning classification
# --------------------------------------------------------------------------------------------
_BENIGN_WARNING_PATTERNS = (
    re.compile(r"^Issues encountered while parsing CIF"),  # summary repeating the warnings below
    re.compile(r"Keys changed to match new magCIF specification"),
    re.compile(r"Skipping relative stoichiometry check"),
    re.compile(r"Cannot determine chemical composition from CIF"),  # check skipped, data untouched
    re.compile(r"No structure parsed for section"),  # handled per block
    re.compile(r"No Pauling electronegativity"),  # noble gases: formula ordering only
)
_FLAG_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"parsed as\s*$", re.S), "cif_warning:sites_dropped"),
    (re.compile(r"parsed as \S"), "cif_warning:symbol_reinterpreted"),
    (re.compile(r"fractional coordinates rounded"), "cif_warning:coords_rounded"),
    (re.compile(r"Incorrect stoichiometry|Missing elements"), "cif_warning:formula_mismatch"),
    (re.compile(r"occupancies .* sum to > 1", re.S), "cif_warning:occupancy_rescaled"),
    (re.compile(r"Defaulting to P1"), "cif_warning:symmetry_assumed_p1"),
    (re.compile(r"No _symmetry_equiv_pos_as_xyz"), "cif_warning:symmetry_from_hm"),
    (re.compile(r"Possible issue in CIF file at line"), "cif_warning:syntax_issue"),
    (re.compile(r"Pauling file corrections applied"), "cif_warning:pauling_file_corrections"),
)


def classify_warnings(messages: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Map parser warning messages to (flags, kept messages); benign notices are dropped."""
    flags: list[str] = []
    kept: list[str] = []
    for message in messages:
        if any(pattern.search(message) for pattern in _BENIGN_WARNING_PATTERNS):
            continue
        flag = next((name for pattern, name in _FLAG_PATTERNS if pattern.search(message)), None)
        flag = flag or "cif_warning:other"
        if flag not in flags:
            flags.append(flag)
        short = " ".join(message.split())[:200]
        if short not in kept:
            kept.append(short)
    return tuple(flags), tuple(kept)


# --------------------------------------------------------------------------------------------
# Per-format parsers (run in workers)
# --------------------------------------------------------------------------------------------
_ATOM_SITE_KEYS = ("_atom_site_fract_x", "_atom_site_cartn_x")
_DATA_BLOCK = re.compile(r"^\s*data_", re.M)


def _has_atom_sites(data: dict[str, Any]) -> bool:
    """A block with at least one real coordinate (exports put '?' placeholders in empty blocks)."""
    for key, values in data.items():
        if key.lower() in _ATOM_SITE_KEYS:
            items = values if isinstance(values, list) else [values]
            if any(str(v).strip() not in {"?", "."} for v in items):
                return True
    return False


_SITE_COORDINATES = re.compile(r"_atom_site_(fract|cartn)_x", re.I)


def _one_data_block(text: str) -> bool:
    """Exactly one line starts (after blanks) with ``data_``: ``_DATA_BLOCK`` found once. The common
    case (the word once, at a line start) is answered with str methods, a fraction of a regex scan."""
    if text.count("data_") == 1:
        at = text.index("data_")
        return not text[text.rfind("\n", 0, at) + 1 : at].strip()
    return len(_DATA_BLOCK.findall(text)) == 1


def _has_site_coordinates(text: str) -> bool:
    return "_atom_site_fract_x" in text or _SITE_COORDINATES.search(text) is not None


def _parse_with_pymatgen(text: str, options: _Options) -> tuple[Structure, tuple[str, ...], tuple[str, ...]]:
    """The first structure of ``text`` by pymatgen's CifParser, its flags and kept warnings."""
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parser = CifParser.from_str(
            text, occupancy_tolerance=options.occupancy_tolerance, site_tolerance=options.site_tolerance
        )
        try:
            structures = parser.parse_structures(primitive=False, on_error="warn")
        except ValueError:  # "Invalid CIF file with no structures!": the reasons are in warnings
            structures = []
    # parser.warnings holds every parsing issue; the caught warnings add the stoichiometry check.
    messages = list(dict.fromkeys([*parser.warnings, *(str(w.message) for w in caught)]))
    if not structures:
        problems = [" ".join(m.split()) for m in messages if not m.startswith("Issues encountered")]
        detail = "; ".join(
            dict.fromkeys(p.replace("No structure parsed for section 1 in CIF. ", "") for p in problems)
        )
        raise ValueError(f"no structure could be built ({detail or 'no usable atom sites'})")
    flags, kept = classify_warnings(messages)
    return structures[0], flags, kept


def _parse_single(
    text: str, options: _Options
) -> tuple[Structure | CompactStructure, tuple[str, ...], tuple[str, ...]]:
    """One block's structure: the fast path's arrays when it reproduces pymatgen exactly, else pymatgen's."""
    if options.cif_parser == "fast":
        fast = parse_cif_compact(text, site_tolerance=options.site_tolerance)
        if fast is not None:
            return (fast[0], *classify_warnings(fast[1])) if fast[1] else (fast[0], (), ())
    return _parse_with_pymatgen(text, options)


def _parse_cif_text(
    text: str,
    item_id: str,
    source: str,
    label: object | None,
    options: _Options,
    extra_flags: tuple[str, ...] = (),
    properties: dict[str, Any] | None = None,
) -> list[Outcome]:
    encoding_flags = tuple(f.split(" ", 1)[0] for f in extra_flags)
    encoding_messages = tuple(f for f in extra_flags if " " in f)
    if _one_data_block(text) and _has_site_coordinates(text):
        # Single-block shortcut (e.g. a CSV's CIF column): one block with atoms, parsed once.
        try:
            structure, flags, messages = _parse_single(text, options)
        except Exception as err:
            return [ReadFailure(source, *plain_reason(err))]
        if extra_flags:
            flags, messages = (*encoding_flags, *flags), (*encoding_messages, *messages)
        return [_finish(structure, item_id, source, label, options, flags, messages, properties)]
    return _parse_blocks(text, item_id, source, label, options, encoding_flags, encoding_messages, properties)


def _parse_blocks(
    text: str,
    item_id: str,
    source: str,
    label: object | None,
    options: _Options,
    encoding_flags: tuple[str, ...],
    encoding_messages: tuple[str, ...],
    properties: dict[str, Any] | None,
) -> list[Outcome]:
    """Every block of a multi-block (or unusual) CIF that holds atom sites, each parsed by pymatgen."""
    from pymatgen.io.cif import CifFile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            blocks = list(CifFile.from_str(text).data.items())
        except Exception as err:
            return [ReadFailure(source, *plain_reason(err))]
    structural = [(name, block) for name, block in blocks if _has_atom_sites(block.data)]
    if not structural:
        return [ReadFailure(source, "no atom sites in CIF (no _atom_site_fract_x / _Cartn_x loop)")]
    outcomes: list[Outcome] = []
    multi = len(structural) > 1
    for name, block in structural:
        block_source = f"{source}#{name}" if multi else source
        block_id = f"{item_id}:{name}" if multi else item_id
        try:
            block_text = str(block) if len(blocks) > 1 else text
            structure, flags, messages = _parse_with_pymatgen(block_text, options)
        except Exception as err:
            outcomes.append(ReadFailure(block_source, *plain_reason(err)))
            continue
        flags, messages = (*encoding_flags, *flags), (*encoding_messages, *messages)
        outcome = _finish(structure, block_id, block_source, label, options, flags, messages, properties)
        outcomes.append(outcome)
    return outcomes
