"""Periodic crystal graphs: pymatgen ``Structure`` -> ``torch_geometric.data.Data``.

Neighbours come from pymatgen's compiled periodic neighbour search (``find_points_in_spheres``,
the routine behind ``Structure.get_neighbor_list``); everything after that call is vectorised
NumPy: the per-atom top-k is one lexsort plus a rank computation, and node features are one
lookup into a per-process element table. There is no Python loop over atoms or edges.

Graph contract (docs/architecture.md): ``x`` float32 [n, F], ``z`` int64 [n], ``edge_index``
int64 [2, E] (source -> neighbour), ``edge_dist`` float32 [E] in Å, ``edge_offset`` int64 [E, 3]
(lattice image of the neighbour), ``edge_vec`` float32 [E, 3] (Cartesian vector from the centre to
that image of the neighbour, Å; angle-aware models need it), ``y`` int64 [1] when a label is given.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from matcard.errors import MatcardError
from matcard.featurize.elements import MAX_Z, NODE_DIM, element_feature_table

if TYPE_CHECKING:
    from pymatgen.core import Structure
    from torch_geometric.data import Batch, Data

    from matcard.structures.compact import CompactStructure

# Distinct sites closer than this are a broken structure (duplicated atoms), not a graph.
MIN_SITE_DISTANCE = 0.1  # Å
_SELF_TOL = 1e-8
# The probe sphere of the nearest-neighbour shortcut: this factor times the radius that holds k+1
# atoms at the cell's mean density (1.25: ~2x the expected count; on MP-20 the probe holds the k
# nearest of every atom for 99.7 % of structures; the rest also pay the full-cutoff search).
_PROBE_SAFETY = 1.25


class FeaturizationError(MatcardError):
    """One structure could not be turned into features; the message is the reason."""


class GraphFeaturizerConfig(BaseModel):
    """Everything that determines a crystal graph; stored with trained models and caches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["graph"] = "graph"
    cutoff: float = Field(8.0, gt=0.0, le=50.0, description="neighbour search radius, Å")
    max_neighbors: int | None = Field(
        12, ge=1, description="neighbours kept per atom in 'nearest' mode (CGCNN: 12)"
    )
    mode: Literal["nearest", "all"] = Field(
        "nearest", description="'nearest': the max_neighbors closest within cutoff; 'all': every one"
    )
    node_features: Literal["cgcnn", "atomic_number"] = "cgcnn"
    grow_cutoff: bool = Field(
        True, description="grow the cutoff for a structure in which some atom has no neighbour"
    )
    max_cutoff: float = Field(20.0, gt=0.0, le=100.0, description="largest grown cutoff, Å")

    @model_validator(mode="after")
    def _check(self) -> GraphFeaturizerConfig:
        if self.mode == "nearest" and self.max_neighbors is None:
            raise ValueError("max_neighbors: required when mode='nearest' (use mode='all' for no limit)")
        if self.max_cutoff < self.cutoff:
            raise ValueError(f"max_cutoff: {self.max_cutoff} is smaller than cutoff {self.cutoff}")
        return self


@dataclass
class GraphArrays:
    """The NumPy form of one graph (what workers ship and caches store before tensors)."""

    x: np.ndarray | None  # float32 [n, F] or None for node_features="atomic_number"
    z: np.ndarray  # int64 [n]
    edge_index: np.ndarray  # int64 [2, E]
    edge_dist: np.ndarray  # float32 [E]
    edge_offset: np.ndarray  # int64 [E, 3]
    cutoff_used: float
    flags: list[str] = field(default_factory=list)
    edge_vec: np.ndarray | None = None  # float32 [E, 3]: neighbour image minus centre, Å

    def __reduce__(self) -> tuple[Any, ...]:
        # A reader worker ships one graph per structure: two byte strings (the integer and the float
        # arrays) instead of six pickled arrays cost a fraction as much to pickle and unpickle.
        if not self._packable():
            return (_graph_from_fields, ({f.name: getattr(self, f.name) for f in fields(self)},))
        ints = np.concatenate([self.z, self.edge_index.ravel(), self.edge_offset.ravel()])
        floats = [a.ravel() for a in (self.x, self.edge_dist, self.edge_vec) if a is not None]
        shape = (len(self.z), len(self.edge_dist), None if self.x is None else self.x.shape[1])
        header = (shape, self.edge_vec is not None, self.cutoff_used, list(self.flags))
        return (_graph_from_bytes, (header, ints.tobytes(), np.concatenate(floats).tobytes()))

    def _packable(self) -> bool:
        n, e = len(self.z), len(self.edge_dist)
        int64, float32 = np.dtype(np.int64), np.dtype(np.float32)
        return (
            self.z.dtype == int64
            and self.z.ndim == 1
            and self.edge_index.dtype == int64
            and self.edge_index.shape == (2, e)
            and self.edge_offset.dtype == int64
            and self.edge_offset.shape == (e, 3)
            and self.edge_dist.dtype == float32
            and self.edge_dist.ndim == 1
            and (self.x is None or (self.x.dtype == float32 and self.x.ndim == 2 and len(self.x) == n))
            and (self.edge_vec is None or (self.edge_vec.dtype == float32 and self.edge_vec.shape == (e, 3)))
        )

    def to_data(self, y: int | None = None) -> Data:
        import torch
        from torch_geometric.data import Data

        data = Data(
            z=torch.from_numpy(self.z),
            edge_index=torch.from_numpy(self.edge_index),
            edge_dist=torch.from_numpy(self.edge_dist),
            edge_offset=torch.from_numpy(self.edge_offset),
            num_nodes=len(self.z),
        )
        if self.edge_vec is not None:
            data.edge_vec = torch.from_numpy(self.edge_vec)
        if self.x is not None:
            data.x = torch.from_numpy(self.x)
        if y is not None:
            data.y = torch.tensor([int(y)], dtype=torch.long)
        return data


def _graph_from_fields(values: dict[str, Any]) -> GraphArrays:
    return GraphArrays(**values)


def _graph_from_bytes(header: tuple[Any, ...], ints: bytes, floats: bytes) -> GraphArrays:
    """Inverse of ``GraphArrays.__reduce__`` (writable arrays of the original dtypes and shapes)."""
    (n, e, width), has_vec, cutoff_used, flags = header
    int_values = np.frombuffer(ints, dtype=np.int64).copy()
    float_values = np.frombuffer(floats, dtype=np.float32).copy()
    x = None
    start = 0
    if width is not None:
        x, start = float_values[: n * width].reshape(n, width), n * width
    return GraphArrays(
        x=x,
        z=int_values[:n],
        edge_index=int_values[n : n + 2 * e].reshape(2, e),
        edge_dist=float_values[start : start + e],
        edge_offset=int_values[n + 2 * e :].reshape(e, 3),
        cutoff_used=cutoff_used,
        flags=flags,
        edge_vec=float_values[start + e :].reshape(e, 3) if has_vec else None,
    )


def batch_graph_arrays(graphs: Sequence[GraphArrays]) -> Batch:
    """One ``Batch`` straight from many graphs' arrays: what ``Batch.from_data_list`` makes of their
    ``to_data()`` (atoms numbered on, ``batch`` / ``ptr``), without a ``Data`` object per graph.

    Screening predicts graphs its reader built as arrays; per-graph ``Data`` construction and PyG's
    generic collate cost about as much as CGCNN's forward pass there.
    """
    import torch
    from torch_geometric.data import Batch

    counts = np.fromiter((len(g.z) for g in graphs), dtype=np.int64, count=len(graphs))
    ptr = np.concatenate([[0], np.cumsum(counts)])
    batch = Batch(
        z=torch.from_numpy(np.concatenate([g.z for g in graphs])),
        edge_index=torch.from_numpy(
            np.concatenate([g.edge_index + start for g, start in zip(graphs, ptr[:-1], strict=True)], axis=1)
        ),
        edge_dist=torch.from_numpy(np.concatenate([g.edge_dist for g in graphs])),
        edge_offset=torch.from_numpy(np.concatenate([g.edge_offset for g in graphs])),
        batch=torch.from_numpy(np.repeat(np.arange(len(graphs), dtype=np.int64), counts)),
        ptr=torch.from_numpy(ptr),
        num_nodes=int(ptr[-1]),
    )
    if all(g.x is not None for g in graphs):
        batch.x = torch.from_numpy(np.concatenate([g.x for g in graphs]))
    if all(g.edge_vec is not None for g in graphs):
        batch.edge_vec = torch.from_numpy(np.concatenate([g.edge_vec for g in graphs]))
    return batch


@dataclass
class StructureArrays:
    """The few arrays of a ``Structure`` the graph builder needs (cheap to pickle to workers)."""

    lattice: np.ndarray  # float64 [3, 3], rows are lattice vectors
    cart_coords: np.ndarray  # float64 [n, 3]
    numbers: np.ndarray  # int64 [n]: atomic number (majority species on disordered sites)
    pbc: np.ndarray  # int64 [3]
    occupancy: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (site, Z, occu) if disordered

    @classmethod
    def from_structure(cls, structure: Structure) -> StructureArrays:
        if len(structure) == 0:
            raise FeaturizationError("structure has no sites")
        lattice = np.ascontiguousarray(structure.lattice.matrix, dtype=float)
        cart = np.ascontiguousarray(structure.frac_coords @ lattice)
        pbc = np.ascontiguousarray(structure.lattice.pbc, dtype=np.int64)
        if structure.is_ordered:
            # site.specie re-checks order per site; the set of one species is read directly instead
            numbers = np.fromiter(
                (next(iter(site.species)).Z for site in structure), dtype=np.int64, count=len(structure)
            )
            return cls(lattice, cart, numbers, pbc)
        sites, zs, occus, majority = [], [], [], []
        for index, site in enumerate(structure):
            items = [(sp.Z, float(occ)) for sp, occ in site.species.items()]
            majority.append(max(items, key=lambda item: item[1])[0])
            for z, occ in items:
                sites.append(index)
                zs.append(z)
                occus.append(occ)
        occupancy = (np.array(sites, dtype=np.int64), np.array(zs, dtype=np.int64), np.array(occus))
        return cls(lattice, cart, np.array(majority, dtype=np.int64), pbc, occupancy)

    @classmethod
    def from_compact(cls, compact: CompactStructure) -> StructureArrays:
        """The same arrays :meth:`from_structure` gives for ``compact.to_structure()``, without it."""
        if len(compact) == 0:
            raise FeaturizationError("structure has no sites")
        lattice = np.ascontiguousarray(compact.lattice, dtype=float)
        cart = np.ascontiguousarray(compact.frac_coords @ lattice)
        return cls(lattice, cart, compact.numbers.astype(np.int64, copy=False), np.ones(3, dtype=np.int64))


def _neighbor_search(arrays: StructureArrays, cutoff: float) -> tuple[np.ndarray, ...]:
    """All pairs within ``cutoff`` (each atom's zero-distance pair with itself included)."""
    from pymatgen.optimization.neighbors import find_points_in_spheres

    return find_points_in_spheres(  # type: ignore[no-any-return]
        arrays.cart_coords,
        arrays.cart_coords,
        r=float(cutoff),
        pbc=arrays.pbc,
        lattice=arrays.lattice,
        tol=_SELF_TOL,
    )


def _check_cell(arrays: StructureArrays) -> float:
    """Reject cells no graph can be built from; returns the cell volume (Å^3)."""
    if len(arrays.numbers) == 0:
        raise FeaturizationError("structure has no sites")
    if not np.isfinite(arrays.cart_coords.sum() + arrays.lattice.sum()):  # any NaN/inf poisons the sum
        raise FeaturizationError("non-finite coordinates or lattice")
    a, b, c = arrays.lattice.tolist()
    volume = abs(
        a[0] * (b[1] * c[2] - b[2] * c[1])
        - a[1] * (b[0] * c[2] - b[2] * c[0])
        + a[2] * (b[0] * c[1] - b[1] * c[0])
    )
    if volume < 1e-6 and arrays.pbc.any():
        raise FeaturizationError("degenerate lattice (cell volume ~ 0)")
    if arrays.numbers.min() < 1 or arrays.numbers.max() > MAX_Z:
        raise FeaturizationError("atomic number outside 1..118 (dummy species?)")
    return volume


def build_graph_arrays(arrays: StructureArrays, config: GraphFeaturizerConfig) -> GraphArrays:
    """Build the graph of one structure from its arrays (the hot path; no per-edge Python)."""
    volume = _check_cell(arrays)
    n_atoms = len(arrays.numbers)
    flags: list[str] = []
    cutoff = config.cutoff
    found = None
    if config.mode == "nearest" and arrays.pbc.all():
        # Exact shortcut: search a smaller sphere first, sized from the atom density to hold the
        # k nearest with room to spare. If every atom has >= k neighbours inside it, those are its
        # k nearest within the cutoff too (anything outside is farther), so the result is the
        # same as a full-cutoff search at a fraction of the pairs. Otherwise search the cutoff.
        k = int(config.max_neighbors)  # type: ignore[arg-type]
        radius = _PROBE_SAFETY * (3.0 * (k + 1) * volume / (4.0 * np.pi * n_atoms)) ** (1.0 / 3.0)
        if radius < cutoff:
            probe = _neighbor_search(arrays, radius)
            if np.bincount(probe[0], minlength=n_atoms).min() >= k + 1:  # k neighbours + itself
                found = probe
    while True:
        centers, neighbors, images, distances = found or _neighbor_search(arrays, cutoff)
        found = None
        counts = np.bincount(centers, minlength=n_atoms)  # includes each atom's self pair
        if counts.min() > 1:
            break
        isolated = np.flatnonzero(counts <= 1)
        if not config.grow_cutoff or cutoff >= config.max_cutoff:
            first = int(isolated[0])
            raise FeaturizationError(
                f"{len(isolated)} atom(s) (first: site {first}, Z={int(arrays.numbers[first])}) "
                f"have no neighbour within {cutoff:g} Å"
            )
        cutoff = min(cutoff * 1.5, config.max_cutoff)
    if cutoff != config.cutoff:
        flags.append(f"cutoff_grown:{config.cutoff:g}->{cutoff:g}")

    # Exactly one zero-distance pair per atom is expected (itself); more means duplicated sites.
    n_zero = int(np.count_nonzero(distances <= _SELF_TOL))
    if n_zero != n_atoms:
        raise FeaturizationError(f"{n_zero - n_atoms} pair(s) of sites coincide (duplicated atoms)")

    # One argsort by (centre, distance): per centre its self pair comes first (rank 0), then
    # neighbours by distance; ranks follow from the per-centre counts without any loop. The
    # default (unstable) sort is 3x faster than a stable one here and still deterministic; exact
    # distance ties at the k-th neighbour may be broken either way, which changes no distance.
    order = np.argsort(centers * (cutoff + 1.0) + distances)
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(order)) - np.repeat(starts, counts)
    if config.mode == "nearest":
        selected = order[(rank >= 1) & (rank <= config.max_neighbors)]  # type: ignore[operator]
    else:
        selected = order[rank >= 1]
    centers, neighbors, images, distances = (
        centers[selected],
        neighbors[selected],
        images[selected],
        distances[selected],
    )
    nearest = float(distances.min())
    if nearest < MIN_SITE_DISTANCE:
        i = int(np.argmin(distances))
        raise FeaturizationError(
            f"sites {int(centers[i])} and {int(neighbors[i])} are {nearest:.3f} Å apart (overlapping atoms)"
        )

    x: np.ndarray | None = None
    if config.node_features == "cgcnn":
        table = element_feature_table()
        if arrays.occupancy is None:
            x = table[arrays.numbers]
        else:
            site, zs, occu = arrays.occupancy
            x = np.zeros((n_atoms, NODE_DIM), dtype=np.float32)
            np.add.at(x, site, table[zs] * occu[:, None].astype(np.float32))
            flags.append("disordered_weighted_features")
    # bond vectors (lattice-aware): what bond angles are computed from; exact for the stored image
    edge_vec = arrays.cart_coords[neighbors] + images @ arrays.lattice - arrays.cart_coords[centers]
    return GraphArrays(
        x=x,
        z=arrays.numbers.astype(np.int64, copy=False),
        edge_index=np.stack((centers, neighbors)).astype(np.int64, copy=False),
        edge_dist=distances.astype(np.float32),
        edge_offset=np.ascontiguousarray(images, dtype=np.int64),
        cutoff_used=float(cutoff),
        flags=flags,
        edge_vec=np.ascontiguousarray(edge_vec, dtype=np.float32),
    )


class GraphFeaturizer:
    """Callable turning a structure into a periodic crystal graph (``Data``)."""

    kind = "graph"
    accepts_arrays = True  # build() takes StructureArrays: screening skips building Structures

    def __init__(
        self, config: GraphFeaturizerConfig | dict[str, Any] | None = None, **overrides: Any
    ) -> None:
        if config is None:
            config = GraphFeaturizerConfig(**overrides)
        elif isinstance(config, dict):
            config = GraphFeaturizerConfig(**{**config, **overrides})
        elif overrides:
            config = config.model_copy(update=overrides)
            config = GraphFeaturizerConfig(**config.model_dump())  # re-validate
        self.config: GraphFeaturizerConfig = config

    @property
    def node_dim(self) -> int:
        """Width F of ``Data.x`` (0 in atomic-number mode, where models embed ``Data.z``)."""
        return NODE_DIM if self.config.node_features == "cgcnn" else 0

    def build(self, structure: Structure | StructureArrays) -> GraphArrays:
        """The graph as NumPy arrays plus flags (e.g. ``cutoff_grown:8->12``)."""
        if isinstance(structure, StructureArrays):
            return build_graph_arrays(structure, self.config)
        arrays = StructureArrays.from_structure(structure)
        return build_graph_arrays(arrays, self.config)

    def __call__(self, structure: Structure | StructureArrays, y: int | None = None) -> Data:
        graph = self.build(structure)
        for flag in graph.flags:
            if flag.startswith("cutoff_grown"):
                warnings.warn(f"isolated atom: {flag}", stacklevel=2)
        return graph.to_data(y)

    def __repr__(self) -> str:
        return f"GraphFeaturizer({self.config!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GraphFeaturizer) and other.config == self.config

    def __hash__(self) -> int:
        return hash(self.config)


def edge_vectors(data: Data, lattice: np.ndarray, cart_coords: np.ndarray) -> np.ndarray:
    """Recompute the Cartesian edge vectors (neighbour image minus centre) from a graph."""
    src, dst = data.edge_index.numpy()
    return cart_coords[dst] + data.edge_offset.numpy() @ lattice - cart_coords[src]


def gaussian_expand(
    distances: np.ndarray, start: float = 0.0, stop: float = 8.0, step: float = 0.2
) -> np.ndarray:
    """CGCNN's Gaussian distance expansion (for models that want it precomputed)."""
    centres = np.arange(start, stop + step, step)
    return np.exp(-((distances[..., None] - centres) ** 2) / step**2)


__all__ = [
    "FeaturizationError",
    "GraphArrays",
    "GraphFeaturizer",
    "GraphFeaturizerConfig",
    "StructureArrays",
    "build_graph_arrays",
    "edge_vectors",
    "gaussian_expand",
]
