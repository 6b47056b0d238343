"""Real structures for the featurization tests, read straight from ../shared/data with pymatgen."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Structure


def _parse(cif: str) -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "fractional coordinates rounded": expected for MP CIFs
        return Structure.from_str(cif, fmt="cif")


@pytest.fixture(scope="session")
def mp20_table(shared_data: Path) -> pd.DataFrame:
    return pd.read_csv(shared_data / "mp20_biternary" / "val.csv.gz")


@pytest.fixture(scope="session")
def mp20_items(mp20_table: pd.DataFrame) -> list[tuple[str, Structure]]:
    """(material_id, Structure) for the first 300 real MP-20 structures."""
    head = mp20_table.head(300)
    return [(mid, _parse(cif)) for mid, cif in zip(head["material_id"], head["cif"], strict=True)]


@pytest.fixture(scope="session")
def triclinic(mp20_table: pd.DataFrame) -> Structure:
    """A real P1 cell (LiS4, mp-995393): oblique angles, 10 atoms."""
    row = mp20_table[mp20_table["material_id"] == "mp-995393"].iloc[0]
    structure = _parse(row["cif"])
    assert all(abs(angle - 90) > 1 for angle in structure.lattice.angles)
    return structure


@pytest.fixture(scope="session")
def small_fcc(mp20_table: pd.DataFrame) -> Structure:
    """A real Heusler primitive cell (TmMgHg2, Fm-3m, 4 atoms, 5 Å edges): much smaller than 8 Å."""
    row = mp20_table[mp20_table["material_id"] == "mp-865981"].iloc[0]
    return _parse(row["cif"])


def brute_force_neighbors(structure: Structure, cutoff: float) -> list[np.ndarray]:
    """Per atom, the sorted distances to every periodic image within ``cutoff`` (excluding itself),
    by explicit enumeration of enough lattice translations (no neighbour-search code involved)."""
    lattice = structure.lattice.matrix
    volume = abs(np.linalg.det(lattice))
    # the number of images needed along a_i is cutoff / (distance between (a_j, a_k) planes)
    heights = [volume / np.linalg.norm(np.cross(lattice[j], lattice[k])) for j, k in ((1, 2), (2, 0), (0, 1))]
    reach = [int(np.ceil(cutoff / h)) + 1 for h in heights]
    grid = np.array(
        [
            (i, j, k)
            for i in range(-reach[0], reach[0] + 1)
            for j in range(-reach[1], reach[1] + 1)
            for k in range(-reach[2], reach[2] + 1)
        ],
        dtype=float,
    )
    shifts = grid @ lattice
    cart = structure.cart_coords
    out = []
    for i in range(len(structure)):
        images = (cart[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
        d = np.linalg.norm(images - cart[i], axis=1)
        d = d[(d <= cutoff) & (d > 1e-8)]
        out.append(np.sort(d))
    return out
