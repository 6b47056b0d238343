"""The dataset registry: where each dataset comes from, how to verify it, and its named tasks.

Facts (URLs pinned to commits, sizes, sha256, licences, citations) are those of the published
sources; a mirror (``--mirror`` / ``MATCARD_MIRROR``) replaces only the base URL: a registered
file is then fetched from ``<mirror>/<folder>/<name>``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal

from matcard.errors import UsageError
from matcard.tasks import CategoricalTask, CrystalSystemTask, RangeTask, Task, ThresholdTask


@dataclass(frozen=True)
class RemoteFile:
    """One published file. ``archive_member``: the file is a member of the archive at ``url``."""

    folder: str
    name: str
    url: str
    sha256: str
    size: int | None = None
    archive_member: str | None = None
    archive_sha256: str | None = None  # of the archive at ``url`` (verified before extraction)

    @property
    def relative_path(self) -> str:
        return f"{self.folder}/{self.name}"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: Literal["structures", "compositions"]
    description: str
    n_rows: int
    licence: str
    citation: str
    homepage: str
    tasks: dict[str, Task]
    files: tuple[RemoteFile, ...] = ()
    embedded: bool = False  # shipped inside an installed package: no download
    live: bool = False  # queried from a web API at load time (materials-project)
    default_task: str | None = None
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int | None:
        sizes = [f.size for f in self.files]
        return sum(s for s in sizes if s is not None) if sizes and all(s is not None for s in sizes) else None


_MP20_BASE = (
    "https://raw.githubusercontent.com/SymmetryAdvantage/WyckoffTransformer/"
    "507e8f147a0e87905c2574ebfbbfc9fa21c2fb09/data/mp_20_biternary"
)
_PEROV5_BASE = (
    "https://raw.githubusercontent.com/txie-93/cdvae/f857f598d6f6cca5dc1ea0582d228f12dcc2c2ea/data/perov_5"
)
_GLASS_BASE = "https://raw.githubusercontent.com/miguelomalley/CardLoss/53b43649b6d04f7ccd65146fdbbf9a612b136c67/Glass/data"
# The Matbench composition CSVs are members of the crabnet 2.0.8 wheel on PyPI (34,739,062 B).
_CRABNET_WHEEL = "https://files.pythonhosted.org/packages/py3/c/crabnet/crabnet-2.0.8-py3-none-any.whl"
_CRABNET_WHEEL_SHA256 = "4901565abaa5b4cd1a7841b9de647a3906df21676b226a7abf972d113f92054a"
_MP_CITATION = "Jain et al., APL Materials 1, 011002 (2013) (Materials Project)"
_MATBENCH_CITATION = "Dunn et al., npj Comput. Mater. 6, 138 (2020) (Matbench v0.1); crabnet 2.0.8 (MIT)"

_metal = ThresholdTask(
    name="metal",
    description="metal (band_gap == 0) vs non-metal",
    column="band_gap",
    op="==",
    value=0.0,
    positive="metal",
    negative="non-metal",
)


def _matbench(name: str, file: str, sha: str, size: int, rows: int, task: Task, desc: str) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        kind="compositions",
        description=desc,
        n_rows=rows,
        licence="MIT; data CC BY 4.0",
        citation=_MATBENCH_CITATION,
        homepage="https://matbench.materialsproject.org/",
        tasks={task.name: task},
        files=(
            RemoteFile(
                folder="matbench_composition",
                name=file,
                url=_CRABNET_WHEEL,
                sha256=sha,
                size=size,
                archive_member=f"crabnet/data/matbench/{file}",
                archive_sha256=_CRABNET_WHEEL_SHA256,
            ),
        ),
        default_task=task.name,
    )


REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="aflow-prototypes",
            kind="structures",
            description="288 AFLOW prototypes shipped inside pymatgen (embedded default, no network)",
            n_rows=288,
            licence="MIT (pymatgen)",
            citation="Mehl et al., Comput. Mater. Sci. 136, S1 (2017) (AFLOW prototypes)",
            homepage="https://aflow.org/prototype-encyclopedia/",
            tasks={"crystal_system": CrystalSystemTask()},
            embedded=True,
            default_task="crystal_system",
            notes="pymatgen/analysis/prototypes/aflow_prototypes.json.gz; space group from the AFLOW label",
        ),
        DatasetSpec(
            name="mp20-biternary",
            kind="structures",
            description="binary/ternary Materials Project structures (MP-20 subset, <= 20 atoms), val+test",
            n_rows=14258,
            licence="Apache-2.0; data CC BY 4.0",
            citation=f"{_MP_CITATION}; Xie et al., ICLR 2022 (CDVAE)",
            homepage="https://github.com/SymmetryAdvantage/WyckoffTransformer",
            tasks={
                "crystal_system": CrystalSystemTask(),
                "metal": _metal,
                "stable": ThresholdTask(
                    name="stable",
                    description="on the convex hull (e_above_hull == 0)",
                    column="e_above_hull",
                    op="==",
                    value=0.0,
                    positive="stable",
                    negative="unstable",
                ),
            },
            files=(
                RemoteFile(
                    "mp20_biternary",
                    "val.csv.gz",
                    f"{_MP20_BASE}/val.csv.gz",
                    "f0a1743241ade50592ce24dd3efc8b5e4d4d84c6a72e827c16699e83ce254f07",
                    1460439,
                ),
                RemoteFile(
                    "mp20_biternary",
                    "test.csv.gz",
                    f"{_MP20_BASE}/test.csv.gz",
                    "e96144ffbad7fc61b0012456ead22d2c8f6993282a4fef584fbf906581086e02",
                    1452762,
                ),
            ),
            default_task="crystal_system",
        ),
        DatasetSpec(
            name="perov5",
            kind="structures",
            description="cubic perovskites (Castelli et al. 2012), 5 atoms per cell, val+test",
            n_rows=7572,
            licence="MIT",
            citation="Castelli et al., Energy Environ. Sci. 5, 9034 (2012); Xie et al., ICLR 2022 (CDVAE)",
            homepage="https://github.com/txie-93/cdvae",
            tasks={
                "gapped": ThresholdTask(
                    name="gapped",
                    description="indirect band gap > 0 (3.9 % positive)",
                    column="ind_gap",
                    op=">",
                    value=0.0,
                    positive="gapped",
                    negative="no-gap",
                )
            },
            files=(
                RemoteFile(
                    "perov5",
                    "val.csv",
                    f"{_PEROV5_BASE}/val.csv",
                    "326f401219901270374b71e2faff63df3a29a99fd26f469993b9f476b693daf2",
                    3673814,
                ),
                RemoteFile(
                    "perov5",
                    "test.csv",
                    f"{_PEROV5_BASE}/test.csv",
                    "a85878c685037f0a578257f6d4fcdde00e968dbab73c5f1e90ecef65218513f6",
                    3671842,
                ),
            ),
            default_task="gapped",
        ),
        DatasetSpec(
            name="glass-tg",
            kind="compositions",
            description="oxide glasses from SciGlass (18 oxide mol %, Tg in K); train/validation as given",
            n_rows=35176,
            licence="MIT",
            citation="Chen et al., Acta Materialia 301, 121509 (2025); O'Malley (2026) CardLoss",
            homepage="https://github.com/miguelomalley/CardLoss",
            tasks={
                "tg_window": RangeTask(
                    name="tg_window",
                    description="500 K <= Tg <= 600 K",
                    column="Tg",
                    low=500.0,
                    high=600.0,
                    positive="window",
                    negative="outside",
                )
            },
            files=(
                RemoteFile(
                    "glass_tg",
                    "train_tg.csv",
                    f"{_GLASS_BASE}/train_tg.csv",
                    "9dd93e9b58faf2550b083e25f211f09266614319cf3c91e855a072cc7de39788",
                    1874590,
                ),
                RemoteFile(
                    "glass_tg",
                    "validation_tg.csv",
                    f"{_GLASS_BASE}/validation_tg.csv",
                    "7a3f370e8bfe93d03dce5911b5478787e87c28b73cc82675880e815b2aaa77bd",
                    466000,
                ),
            ),
            default_task="tg_window",
            notes="column 'subset' is 'train' or 'validation' (the given split); FemOn counted as Fe2O3",
        ),
        _matbench(
            "matbench-mp-is-metal",
            "mp_is_metal.csv",
            "080afc38363fd7e0872fb04ae93a73fdecd0329408d007e8811ccd6e96b7e79a",
            1574142,
            106113,
            CategoricalTask(
                name="metal",
                description="Materials Project metal (target 1) vs non-metal",
                column="target",
                classes=("non-metal", "metal"),
                mapping={"0": "non-metal", "1": "metal"},
            ),
            "Matbench mp_is_metal: compositions, metal vs non-metal (DFT)",
        ),
        _matbench(
            "matbench-glass",
            "glass.csv",
            "2c76eaaad9c1d92959e99a8a5c77bf1dce605279ee83af0ba3ed18833dcf9a33",
            85797,
            5680,
            CategoricalTask(
                name="glass",
                description="metallic glass former (target 1) vs not",
                column="target",
                classes=("no-glass", "glass"),
                mapping={"0": "no-glass", "1": "glass"},
            ),
            "Matbench glass: compositions, metallic-glass formers (experiment)",
        ),
        _matbench(
            "matbench-expt-is-metal",
            "expt_is_metal.csv",
            "5b0828561a6c925d96cd0215f78eb1e8d1ca7c05e9e12fcdbdfbcaeaddd73f13",
            54988,
            4921,
            CategoricalTask(
                name="metal",
                description="experimentally metallic (target 1) vs not",
                column="target",
                classes=("non-metal", "metal"),
                mapping={"0": "non-metal", "1": "metal"},
            ),
            "Matbench expt_is_metal: compositions, metal vs non-metal (experiment)",
        ),
        DatasetSpec(
            name="materials-project",
            kind="structures",
            description="live Materials Project query through the official mp-api client (needs MP_API_KEY)",
            n_rows=0,
            licence="CC BY 4.0",
            citation=_MP_CITATION,
            homepage="https://next-gen.materialsproject.org/api",
            tasks={
                "crystal_system": CrystalSystemTask(),
                "metal": _metal,
                "magnetic_ordering": CategoricalTask(
                    name="magnetic_ordering",
                    description="magnetic ordering (NM, FM, FiM, AFM, Unknown)",
                    column="ordering",
                ),
            },
            live=True,
            default_task="crystal_system",
            notes="query: elements, chemsys, num_elements, max_sites, limit; endpoint via MP_API_ENDPOINT",
        ),
    )
}


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; a UsageError with close matches otherwise."""
    spec = REGISTRY.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, list(REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"unknown dataset {name!r}.{hint} Known datasets: {', '.join(REGISTRY)}")
    return spec


__all__ = ["REGISTRY", "DatasetSpec", "RemoteFile", "get_spec"]
