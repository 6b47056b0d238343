"""Real crystal graphs for the model tests: AFLOW prototypes (shipped with pymatgen) featurized."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def aflow_graphs(aflow_dataset):
    """48 real periodic crystal graphs (CGCNN node features) with crystal-system labels."""
    import torch

    from matcard.featurize import GraphFeaturizer

    featurizer = GraphFeaturizer()
    labels = aflow_dataset.labels("crystal_system")
    graphs = []
    for index in range(48):
        graph = featurizer(aflow_dataset.structure(index))
        graph.y = torch.tensor([int(labels.y[index])])
        graphs.append(graph)
    return graphs, featurizer.node_dim, len(labels.class_names)


@pytest.fixture(autouse=True, scope="session")
def _fast_cpu_math():
    """As in training (see matcard.training): flush denormals, one intra-op thread on a shared CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mp20_structures(shared_data):
    """The first 8 real MP-20 structures (low-symmetry cells included), parsed with pymatgen."""
    import warnings

    import pandas as pd
    from pymatgen.core import Structure

    table = pd.read_csv(shared_data / "mp20_biternary" / "val.csv.gz", nrows=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [Structure.from_str(cif, fmt="cif") for cif in table["cif"]]
