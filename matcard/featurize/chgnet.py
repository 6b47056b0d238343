"""Pretrained CHGNet representations per structure: a frozen foundation model as a featurizer.

CHGNet (Deng et al. 2023; the ``chgnet`` package, used as a library) turns a structure into its
own crystal graph (atom graph with a 6 Å cutoff, bond graph with 3 Å) and runs four interaction
blocks pretrained on MPtrj. This featurizer keeps the network frozen and reads out one vector
per structure, stored like composition descriptors (``Data.x`` float32 [1, F]):

- ``pooling="crystal"``: CHGNet's own crystal feature (64 numbers). For the 0.3.0 checkpoint it
  is the *sum* over atoms of the layer-normalised last-layer atom features, so it grows with
  the number of atoms in the cell (a supercell is not the same vector).
- ``pooling="crystal+atoms"``: that, plus mean and max over atoms of the last layer's
  (normalised) atom features and of the previous layer's: 5 x 64 = 320 numbers; the mean and
  max parts do not depend on the cell chosen.

Only the energy head runs (``task="e"``, no autograd): forces / stresses / magmoms cost ~8x more
and are not used. Structures are converted one by one (failures are per structure: unsupported
element, isolated atom, disorder) and the valid ones run through the network in batches.

The checkpoint version is part of the config, so it enters the feature cache key and the model
bundle; building a featurizer checks that the installed chgnet ships that checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from matcard.errors import ConfigError
from matcard.featurize.graph import FeaturizationError

if TYPE_CHECKING:
    from pymatgen.core import Structure
    from torch_geometric.data import Data

CHGNET_REQUIREMENT = "chgnet==0.4.2"
CHGNET_MAX_Z = 94  # CHGNet's atom embedding has 94 rows (H..Pu)
CHGNET_WIDTH = 64  # atom / crystal feature width of the released checkpoints
_PARTS = {
    "crystal": ("crystal",),
    "crystal+atoms": ("crystal", "last_mean", "last_max", "previous_mean", "previous_max"),
}


class ChgnetFeaturizerConfig(BaseModel):
    """Which pretrained CHGNet and which read-out; stored with trained models and caches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["chgnet"] = "chgnet"
    model_version: str = Field(
        "0.3.0", description="pretrained checkpoint shipped with chgnet (0.3.0, 0.2.0, r2scan)"
    )
    pooling: Literal["crystal", "crystal+atoms"] = Field(
        "crystal", description="crystal: CHGNet's crystal feature; crystal+atoms: plus pooled atom features"
    )


def installed_chgnet() -> tuple[str, Path] | None:
    """(package version, package folder) of the installed chgnet, without importing it (or torch)."""
    spec = importlib.util.find_spec("chgnet")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        version = importlib.metadata.version("chgnet")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return version, Path(next(iter(spec.submodule_search_locations)))


def available_model_versions() -> list[str]:
    """Pretrained checkpoints the installed chgnet ships (folder names under chgnet/pretrained)."""
    found = installed_chgnet()
    if found is None:
        return []
    root = found[1] / "pretrained"
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.pth.tar")))


def check_model_version(version: str) -> None:
    """ConfigError unless the installed chgnet provides checkpoint ``version``."""
    found = installed_chgnet()
    if found is None:
        raise ConfigError(
            f"featurizer.model_version: the chgnet featurizer needs the chgnet package "
            f"(pip install {CHGNET_REQUIREMENT}); it is not installed"
        )
    available = available_model_versions()
    if version not in available:
        raise ConfigError(
            f"featurizer.model_version: CHGNet checkpoint {version!r} is not shipped with the installed "
            f"chgnet {found[0]} (it has {', '.join(available) or 'none'}); install {CHGNET_REQUIREMENT} "
            "or choose one of those"
        )


@functools.lru_cache(maxsize=4)
def load_chgnet(version: str) -> Any:
    """The pretrained CHGNet (CPU, eval mode, frozen), loaded once per process."""
    import multiprocessing

    import torch

    check_model_version(version)
    if multiprocessing.parent_process() is not None:
        torch.set_num_threads(1)  # N featurization workers x 1 thread: no oversubscription
    from chgnet.model import CHGNet

    # CHGNet prints a banner on stdout; the CLI's --json output must stay clean
    with contextlib.redirect_stdout(io.StringIO()):
        model = CHGNet.load(model_name=version, use_device="cpu", verbose=False)
    if model.version != version:
        raise ConfigError(f"featurizer.model_version: chgnet loaded {model.version!r}, not {version!r}")
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def check_structure(structure: Any) -> Structure:
    """The structure, or FeaturizationError with a plain reason CHGNet would fail on."""
    from pymatgen.core import Structure

    if not isinstance(structure, Structure):
        raise FeaturizationError(f"CHGNet needs a crystal structure, got {type(structure).__name__}")
    if len(structure) == 0:
        raise FeaturizationError("structure has no sites")
    if not structure.is_ordered:
        raise FeaturizationError("disordered structure (CHGNet needs one species per site)")
    numbers = [getattr(site.specie, "Z", 0) for site in structure]
    unsupported = sorted({str(site.specie) for site, z in zip(structure, numbers, strict=True)
                          if not 1 <= z <= CHGNET_MAX_Z})  # fmt: skip
    if unsupported:
        raise FeaturizationError(
            f"element(s) {', '.join(unsupported)} not supported by CHGNet (H..Pu, Z <= {CHGNET_MAX_Z})"
        )
    if not np.isfinite(structure.lattice.matrix).all() or not np.isfinite(structure.frac_coords).all():
        raise FeaturizationError("non-finite coordinates or lattice")
    if structure.volume < 1e-6:
        raise FeaturizationError("degenerate lattice (cell volume ~ 0)")
    return structure


def convert(model: Any, structure: Any, graph_id: str = "") -> Any:
    """CHGNet's own ``CrystalGraph`` of one structure (FeaturizationError with a plain reason)."""
    structure = check_structure(structure)
    try:
        return model.graph_converter(structure, graph_id=graph_id or None)
    except ValueError as error:
        if "isolated atom" in str(error):
            cutoff = getattr(model.graph_converter, "atom_graph_cutoff", 6)
            reason = f"isolated atom(s): no neighbour within CHGNet's {cutoff:g} Å"
            raise FeaturizationError(reason) from error
        raise FeaturizationError(f"CHGNet graph conversion failed: {error}") from error
    except (RuntimeError, IndexError, TypeError) as error:
        raise FeaturizationError(f"CHGNet graph conversion failed: {error}") from error


class ChgnetFeaturizer:
    """Callable turning a structure into ``Data(x=[1, F])`` of frozen CHGNet features."""

    kind = "chgnet"

    def __init__(
        self,
        config: ChgnetFeaturizerConfig | dict[str, Any] | None = None,
        *,
        batch_size: int = 64,
        **overrides: Any,
    ) -> None:
        if config is None:
            config = ChgnetFeaturizerConfig(**overrides)
        elif isinstance(config, dict):
            config = ChgnetFeaturizerConfig(**{**config, **overrides})
        elif overrides:
            config = ChgnetFeaturizerConfig(**{**config.model_dump(), **overrides})
        check_model_version(config.model_version)
        self.config: ChgnetFeaturizerConfig = config
        self.batch_size = max(1, int(batch_size))  # not in the config: it never changes the features

    @property
    def model(self) -> Any:
        return load_chgnet(self.config.model_version)

    @property
    def feature_labels(self) -> list[str]:
        return [f"chgnet_{part}_{i}" for part in _PARTS[self.config.pooling] for i in range(CHGNET_WIDTH)]

    @property
    def node_dim(self) -> int:
        return len(_PARTS[self.config.pooling]) * CHGNET_WIDTH

    def features_many(self, structures: Sequence[Any]) -> list[np.ndarray | FeaturizationError]:
        """float32 [F] per structure, or the FeaturizationError that explains why not (in order)."""
        model = self.model
        out: list[np.ndarray | FeaturizationError] = []
        graphs: list[tuple[int, Any]] = []
        for index, structure in enumerate(structures):
            try:
                graphs.append((index, convert(model, structure)))
                out.append(FeaturizationError("not featurized"))  # replaced below
            except FeaturizationError as error:
                out.append(error)
        for start in range(0, len(graphs), self.batch_size):
            chunk = graphs[start : start + self.batch_size]
            try:
                vectors = self._forward([g for _, g in chunk])
            except (RuntimeError, ValueError, IndexError) as error:
                if len(chunk) == 1:
                    out[chunk[0][0]] = FeaturizationError(f"CHGNet failed: {error}")
                    continue
                vectors = []  # isolate the structure that breaks the batch
                for _, graph in chunk:
                    try:
                        vectors.append(self._forward([graph])[0])
                    except (RuntimeError, ValueError, IndexError) as single:
                        vectors.append(FeaturizationError(f"CHGNet failed: {single}"))
            for (index, _), vector in zip(chunk, vectors, strict=True):
                if isinstance(vector, np.ndarray) and not np.isfinite(vector).all():
                    vector = FeaturizationError("CHGNet gave non-finite features")
                out[index] = vector
        return out

    def _forward(self, graphs: list[Any]) -> list[np.ndarray | FeaturizationError]:
        import torch

        model = self.model
        pooled = self.config.pooling == "crystal+atoms"
        captured: list[torch.Tensor] = []
        last = model.readout_norm if model.readout_norm is not None else model.atom_conv_layers[-1]
        hook = last.register_forward_hook(lambda _m, _i, output: captured.append(output)) if pooled else None
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                # chgnet converts a grad-tracking volume to a scalar internally; harmless here
                warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
                prediction = model(graphs, task="e", return_crystal_feas=True, return_atom_feas=pooled)
        finally:
            if hook is not None:
                hook.remove()
        parts = [prediction["crystal_fea"].float()]
        if pooled:
            counts = prediction["atoms_per_graph"].tolist()
            for atoms in (captured[-1].split(counts), prediction["atom_fea"]):
                parts.append(torch.stack([a.mean(0) for a in atoms]))
                parts.append(torch.stack([a.max(0).values for a in atoms]))
        matrix = torch.cat(parts, dim=1).numpy().astype(np.float32)
        return list(matrix)

    def features(self, structure: Any) -> np.ndarray:
        """float32 [F] of one structure; FeaturizationError with a reason."""
        result = self.features_many([structure])[0]
        if isinstance(result, FeaturizationError):
            raise result
        return result

    def featurize_many(self, structures: Sequence[Any]) -> list[Data | FeaturizationError]:
        """``Data`` per structure (or the error), batched: what screening uses for a shard batch."""
        results = self.features_many(structures)
        return [r if isinstance(r, FeaturizationError) else _to_data(r) for r in results]

    def __call__(self, structure: Any, y: int | None = None) -> Data:
        return _to_data(self.features(structure), y)

    def __repr__(self) -> str:
        return f"ChgnetFeaturizer({self.config!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChgnetFeaturizer) and other.config == self.config

    def __hash__(self) -> int:
        return hash(self.config)


def _to_data(vector: np.ndarray, y: int | None = None) -> Data:
    import torch
    from torch_geometric.data import Data

    data = Data(x=torch.from_numpy(np.asarray(vector, dtype=np.float32)[None, :]), num_nodes=1)
    if y is not None:
        data.y = torch.tensor([int(y)], dtype=torch.long)
    return data


__all__ = [
    "CHGNET_MAX_Z",
    "CHGNET_REQUIREMENT",
    "ChgnetFeaturizer",
    "ChgnetFeaturizerConfig",
    "available_model_versions",
    "check_model_version",
    "check_structure",
    "convert",
    "installed_chgnet",
    "load_chgnet",
]
