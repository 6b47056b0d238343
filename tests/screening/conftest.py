"""Screening fixtures: real model bundles and a real subset of mp20-biternary."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

# Elements and cell sizes typical of small binary/ternary crystals: the seeded bundle's
# "training distribution", so that the out-of-distribution flags have something to compare with.
SEEDED_STATS = {
    "n_train": 100,
    "elements": {
        el: 1 for el in ("Li", "Na", "K", "Mg", "Ca", "Al", "Si", "O", "S", "N", "F", "Cl", "Fe", "Cu")
    },
    "n_atoms": {"min": 1, "max": 20},
    "volume_per_atom": {"min": 5.0, "max": 60.0},
}


@pytest.fixture(scope="session")
def seeded_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real CGCNN bundle (save_bundle -> load_model) with seeded weights: fast, deterministic.

    Screening mechanics (shards, resume, backends, ranking) need a real model but not a good one;
    the trained model below covers the end-to-end path through matcard.train.
    """
    import torch

    from matcard.bundle import save_bundle
    from matcard.featurize import GraphFeaturizer
    from matcard.models import build_model

    torch.manual_seed(0)
    featurizer = GraphFeaturizer()
    classes = ["triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic"]
    model = build_model("cgcnn", featurizer.node_dim, len(classes), atom_features=32, hidden=64, n_conv=2)
    directory = tmp_path_factory.mktemp("seeded") / "model"
    save_bundle(
        directory,
        model,
        model_name="cgcnn",
        model_params={"atom_features": 32, "hidden": 64, "n_conv": 2},
        in_dim=featurizer.node_dim,
        featurizer_config={"kind": "graph", **featurizer.config.model_dump()},
        class_names=classes,
        class_counts=[10] * len(classes),
        training_stats=SEEDED_STATS,
    )
    return directory


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, session_data_dir: Path, file_mirror: str) -> Path:
    """A real model trained by matcard.train on the embedded aflow-prototypes data (2 epochs)."""
    import os

    import matcard

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    previous = {k: os.environ.get(k) for k in ("MATCARD_DATA_DIR", "MATCARD_MIRROR")}
    os.environ["MATCARD_DATA_DIR"] = str(session_data_dir)  # session fixture: set the env by hand
    os.environ["MATCARD_MIRROR"] = file_mirror
    try:
        matcard.train(dataset="aflow-prototypes", epochs=2, out=str(run_dir), progress=False)
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return run_dir


@pytest.fixture(scope="session")
def mp20_subset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 400 rows of mp20-biternary val.csv.gz, unchanged (a real CSV with a CIF column)."""
    import pandas as pd

    with gzip.open(shared_data / "mp20_biternary" / "val.csv.gz", "rt") as fh:
        table = pd.read_csv(fh, nrows=400)
    path = tmp_path_factory.mktemp("mp20") / "mp20_subset.csv"
    table.to_csv(path, index=False)
    return path
