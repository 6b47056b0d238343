"""The gemmi CIF path gives pymatgen's structure (and flags) or falls back; the switch forces pymatgen."""

from __future__ import annotations

import multiprocessing
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import matcard.structures.cif as cif_module
from cli import app
from matcard.errors import UsageError
from matcard.structures import available_cpus, classify_warnings, parse_cif_strings, read_structures
from matcard.structures.fastcif import CIF_PARSER_ENV, parse_cif_compact, parse_cif_fast, resolve_cif_parser


def reference(text: str) -> tuple[object, tuple[str, ...]]:
    """pymatgen's structure and flags for one CIF text, the way the reader runs it."""
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parser = CifParser.from_str(text)
        structure = parser.parse_structures(primitive=False, on_error="warn")[0]
    messages = list(dict.fromkeys([*parser.warnings, *(str(w.message) for w in caught)]))
    return structure, classify_warnings(messages)[0]


def same_structure(fast, ref) -> str:  # type: ignore[no-untyped-def]
    """'' when equal: composition, lattice (1e-6), species + fractional coordinates mod 1 (1e-6)."""
    if fast.composition != ref.composition or len(fast) != len(ref):
        return f"composition {fast.composition} != {ref.composition}"
    if not np.allclose(fast.lattice.matrix, ref.lattice.matrix, atol=1e-6, rtol=0):
        return "lattice differs"
    unmatched = list(range(len(ref)))
    for site in fast:
        for j in unmatched:
            other = ref[j]
            diff = site.frac_coords - other.frac_coords
            if site.species == other.species and np.all(np.abs(diff - np.round(diff)) < 1e-6):
                unmatched.remove(j)
                break
        else:
            return f"site {site.species_string} {site.frac_coords} has no match"
    return ""


def _compare(text: str) -> tuple[str, str]:
    """('fallback' | 'same' | 'same_unordered', problem) for one CIF."""
    fast = parse_cif_fast(text)
    if fast is None:
        return "fallback", ""
    ref, ref_flags = reference(text)
    problem = same_structure(fast[0], ref)
    fast_flags = classify_warnings(fast[1])[0]
    if not problem and fast_flags != ref_flags:
        problem = f"flags {fast_flags} != {ref_flags}"
    in_order = [s.species_string for s in fast[0]] == [s.species_string for s in ref] and np.allclose(
        fast[0].frac_coords, ref.frac_coords, atol=1e-6, rtol=0
    )
    return ("same" if in_order else "same_unordered"), problem


def _csv_cifs(path: Path, nrows: int | None = None) -> list[str]:
    return list(pd.read_csv(path, nrows=nrows)["cif"])


def _file_cifs(folder: Path) -> list[str]:
    return [p.read_text(errors="replace") for p in sorted(folder.glob("*.*cif"))]


def test_mp20_sample_is_taken_fast_and_equals_pymatgen_in_site_order(shared_data: Path) -> None:
    texts = _csv_cifs(shared_data / "mp20_biternary" / "val.csv.gz", nrows=120)
    outcomes = [_compare(t) for t in texts]
    assert [problem for _, problem in outcomes if problem] == []
    assert all(kind == "same" for kind, _ in outcomes)  # accepted, and pymatgen's exact site order


def test_messy_cifs_fall_back_or_match(shared_data: Path) -> None:
    outcomes = {
        p.name: _compare(p.read_text(errors="replace")) for p in (shared_data / "messy_cifs").glob("*cif")
    }
    assert {name: problem for name, (_, problem) in outcomes.items() if problem} == {}
    for name in ("bad_occu.cif", "PF_sd_1601634.cif", "Mn3Ge_IR2.mcif", "nosymm.cif", "garnet.cif"):
        assert outcomes[name][0] == "fallback", name  # disorder, dropped sites, magnetic, no symmetry ops


# The atom-site loop header every CIF template below ends with (its rows follow).
_SITE_LOOP = """loop_
_atom_site_type_symbol
_atom_site_label
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
"""


def test_rounded_coordinates_keep_pymatgen_flag_and_values() -> None:
    cif = """data_x
_cell_length_a 4.0
_cell_length_b 4.0
_cell_length_c 5.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 120
loop_
_symmetry_equiv_pos_as_xyz
'x, y, z'
"""
    cif += _SITE_LOOP + "Zn Zn1 0.3333 0.6667 0.0 1\nO O1 0.33333 0.66667 0.375 1\n"
    fast = parse_cif_fast(cif)
    assert fast is not None
    ref, ref_flags = reference(cif)
    assert classify_warnings(fast[1])[0] == ref_flags == ("cif_warning:coords_rounded",)
    assert same_structure(fast[0], ref) == ""
    assert fast[0][0].frac_coords[0] == 1 / 3


def test_partial_occupancy_and_missing_symmetry_fall_back() -> None:
    base = """data_x
_cell_length_a 4.0
_cell_length_b 4.0
_cell_length_c 4.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
{ops}"""
    base += _SITE_LOOP + "Fe Fe1 0 0 0 {occ}\n"
    ops = "loop_\n_symmetry_equiv_pos_as_xyz\n'x, y, z'\n'-x, -y, -z'\n"
    assert parse_cif_fast(base.format(ops=ops, occ="1")) is not None
    assert parse_cif_fast(base.format(ops=ops, occ="0.5")) is None
    assert parse_cif_fast(base.format(ops="", occ="1")) is None  # pymatgen would assume P1 and flag it
    assert parse_cif_fast("data_x\nnot a cif at all ' \n") is None


def test_records_and_failures_are_the_same_either_way(shared_data: Path) -> None:
    sources = [shared_data / "messy_cifs", shared_data / "cgcnn_sample_classification"]
    fast = read_structures(*sources, workers=0, cif_parser="fast")
    ref = read_structures(*sources, workers=0, cif_parser="pymatgen")
    assert [(r.id, r.flags) for r in fast.records] == [(r.id, r.flags) for r in ref.records]
    assert [(f.source, f.reason) for f in fast.failures] == [(f.source, f.reason) for f in ref.failures]
    for a, b in zip(fast.records, ref.records, strict=True):
        assert same_structure(a.structure, b.structure) == ""


def test_pymatgen_can_be_forced(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = _csv_cifs(shared_data / "perov5" / "val.csv", nrows=3)
    calls: list[int] = []

    def counting(text: str, **kwargs: object) -> object:
        calls.append(1)
        return parse_cif_compact(text, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cif_module, "parse_cif_compact", counting)
    parse_cif_strings(texts, workers=0)
    assert len(calls) == 3  # fast by default
    monkeypatch.setenv(CIF_PARSER_ENV, "pymatgen")
    records = parse_cif_strings(texts, workers=0)
    assert len(calls) == 3 and all(hasattr(r, "structure") for r in records)
    assert resolve_cif_parser() == "pymatgen"
    with pytest.raises(UsageError):
        resolve_cif_parser("bogus")


def test_cli_cif_parser_option_is_checked(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the CLI exports its choice to MATCARD_CIF_PARSER (its reader processes inherit it): setting the
    # default here has the variable restored after the test, whatever the CLI leaves in it
    monkeypatch.setenv(CIF_PARSER_ENV, "fast")
    runner = CliRunner()
    bad = runner.invoke(
        app, ["--cif-parser", "bogus", "inspect", str(shared_data / "messy_cifs" / "V2O3.cif")]
    )
    assert bad.exit_code == 2
    good = runner.invoke(
        app, ["--cif-parser", "pymatgen", "inspect", "--json", str(shared_data / "messy_cifs" / "V2O3.cif")]
    )
    assert good.exit_code == 0, good.output


@pytest.mark.slow
def test_every_shared_cif_parses_the_same_fast_or_falls_back(shared_data: Path) -> None:
    """Every CIF of MP-20, perov-5, the CGCNN sample and messy_cifs: identical structure or fallback."""
    datasets = {
        "mp20_biternary": _csv_cifs(shared_data / "mp20_biternary" / "val.csv.gz")
        + _csv_cifs(shared_data / "mp20_biternary" / "test.csv.gz"),
        "perov5": _csv_cifs(shared_data / "perov5" / "val.csv")
        + _csv_cifs(shared_data / "perov5" / "test.csv"),
        "cgcnn_sample": _file_cifs(shared_data / "cgcnn_sample_classification"),
        "messy_cifs": _file_cifs(shared_data / "messy_cifs"),
    }
    started = time.perf_counter()
    counts: dict[str, dict[str, int]] = {}
    problems: list[str] = []
    with multiprocessing.get_context("fork").Pool(available_cpus()) as pool:
        for name, texts in datasets.items():
            outcomes = pool.map(_compare, texts, chunksize=64)
            counts[name] = {
                kind: sum(k == kind for k, _ in outcomes) for kind in ("same", "same_unordered", "fallback")
            }
            problems += [f"{name}[{i}]: {p}" for i, (_, p) in enumerate(outcomes) if p]
    print(f"\nequivalence: {counts} in {time.perf_counter() - started:.0f} s")
    assert problems == []
    assert counts["mp20_biternary"]["fallback"] < len(datasets["mp20_biternary"]) // 100


_P1 = """data_p1
_cell_length_a 5.0
_cell_length_b 5.5
_cell_length_c 6.0
_cell_angle_alpha 90
_cell_angle_beta 95
_cell_angle_gamma 90
_chemical_formula_sum '{formula}'
loop_
_symmetry_equiv_pos_site_id
_symmetry_equiv_pos_as_xyz
1 'x, y, z'
"""
_P1 += _SITE_LOOP + "{sites}\n"


@pytest.mark.parametrize(
    ("formula", "sites"),
    [
        # species interleaved, coordinates outside [0, 1), an uncertainty and a quoted label
        ("Na2 Cl2", "Cl Cl1 0.5 0.5 0.5 1\nNa Na1 0 0 0 1\nCl 'Cl 2' 1.25(3) 0 0.5 1.0\nNa Na2 -0.5 0.5 0 1"),
        # a noble gas (no electronegativity): the step-by-step route, still pymatgen's order
        ("Xe1 F2", "F F1 0.1 0.2 0.3 1\nXe Xe1 0 0 0 1\nF F2 0.9 0.8 0.7 1"),
        ("Ar1 Kr1 O1", "Kr Kr1 0.5 0 0 1\nO O1 0 0.5 0 1\nAr Ar1 0 0 0.5 1"),
    ],
)
def test_p1_files_match_pymatgen_in_site_order(formula: str, sites: str) -> None:
    cif = _P1.format(formula=formula, sites=sites)
    assert _compare(cif) == ("same", "")
    fast = parse_cif_fast(cif)
    assert fast is not None
    ref, _ = reference(cif)
    assert [site.label for site in fast[0]] == [site.label for site in ref]


def test_p1_sites_on_one_position_or_a_wrong_formula_fall_back() -> None:
    on_one = "Na Na1 0 0 0 1\nCl Cl1 1.00000001 0 0 1"
    assert parse_cif_fast(_P1.format(formula="Na1 Cl1", sites=on_one)) is None  # pymatgen merges them
    sites = "Na Na1 0 0 0 1\nCl Cl1 0.5 0.5 0.5 1"
    assert parse_cif_fast(_P1.format(formula="Na1 Cl1", sites=sites)) is not None
    assert parse_cif_fast(_P1.format(formula="Na1 Cl2", sites=sites)) is None  # pymatgen warns


def test_sorted_pair_test_agrees_with_the_broadcast_test() -> None:
    """The P1 route's pair test (sites sorted by wrapped x) decides as the n x n broadcast does, on
    cells full of special positions, wrapped images and near-misses around the tolerance."""
    import matcard.structures.fastcif as fastcif

    rng = np.random.default_rng(7)
    specials = [0.0, 0.5, 0.25, 0.75, 1 / 3, 2 / 3, 1.0, -0.5, 2.5, -1.0, 0.99995, 4e-5, -4e-5, 1e-4, 0.9999]
    coincide = 0
    for trial in range(20000):
        n = int(rng.integers(1, 14))
        if trial % 3 == 0:
            coords = rng.random((n, 3))
        else:
            picks = rng.choice(specials, (n, 3))
            coords = np.where(rng.random((n, 3)) < 0.8, picks, rng.random((n, 3)))
        if n > 1 and rng.random() < 0.3:  # an image of another site, shifted by up to a few atol
            i, j = rng.integers(0, n, 2)
            coords[i] = coords[j] + rng.integers(-1, 2, 3) + rng.normal(0, 1e-4, 3)
        expected = fastcif._listed_sites_coincide(coords, 1e-4)
        columns = [coords[:, k].tolist() for k in range(3)]
        assert fastcif._columns_coincide(columns, coords, 1e-4) == expected, coords
        coincide += expected
    assert 1000 < coincide < 19000  # both outcomes well represented


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_coordinates_fall_back(value: str) -> None:
    sites = f"Na Na1 0 0 0 1\nCl Cl1 0.5 {value} 0.5 1"
    assert parse_cif_compact(_P1.format(formula="Na1 Cl1", sites=sites)) is None


def test_simple_formulas_are_read_as_composition_reads_them(shared_data: Path) -> None:
    """The formula shortcut gives Composition's amounts for every formula tag of the shared CIFs."""
    import re

    from pymatgen.core import Composition

    import matcard.structures.fastcif as fastcif

    texts = _csv_cifs(shared_data / "mp20_biternary" / "val.csv.gz", nrows=400) + _csv_cifs(
        shared_data / "perov5" / "val.csv", nrows=200
    )
    tag = re.compile(r"^_chemical_formula_(?:sum|structural)\s+'?([^'\n]+)'?\s*$", re.M)
    formulas = {m.strip() for text in texts for m in tag.findall(text)}
    formulas |= {"GaTe", "Ga4Te4", "Fe0.5 Ni0.5", "H2 O1 H1", "Xx2 O", "Fe2+ O3", "(SO4)2", "Ca 0"}
    assert len(formulas) > 300
    for formula in sorted(formulas):
        try:
            expected = {str(k): v for k, v in Composition(formula).remove_charges().as_dict().items()}
        except Exception:
            expected = None
        assert fastcif._formula_amounts(formula) == expected, formula
