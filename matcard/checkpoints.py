"""Training checkpoints: written atomically, loaded without running code, carrying the resume state.

Every checkpoint (``RUN/checkpoints/last.ckpt`` each epoch, ``best.ckpt`` on improvement) is a
Lightning checkpoint holding only tensors and plain Python data, so it is always read with
``torch.load(weights_only=True)``: a crafted file cannot execute anything, it is refused.

Beside Lightning's own state (model with the loss buffers, optimiser, scheduler, loops, early
stopping, checkpoint callbacks, history) the training module adds ``checkpoint["matcard"]``
(:func:`resume_state`): the Python / NumPy / torch RNG states at the moment of saving, the sampler's
epoch and the loss's plain attributes. Restoring them (:func:`restore_resume_state`) makes the next
epoch draw exactly what an uninterrupted run draws.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np

from matcard.errors import MatcardError
from matcard.fileio import atomic_path

STATE_KEY = "matcard"
_PLAIN = (bool, int, float, str)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint as plain data (``weights_only=True``); anything else is refused, never run."""
    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        what = f"it refers to {found.group(1)}" if found else "it is not plain data"
        raise MatcardError(
            f"refusing to load {path}: loading it could run code ({what}); only plain tensors and "
            "values are accepted. Delete it, or train into another --out"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise MatcardError(f"cannot read checkpoint {path}: {error}") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise MatcardError(f"{path} is not a training checkpoint (no state_dict)")
    return state


def checkpoint_io_class() -> type:
    """A Lightning CheckpointIO that writes with matcard.fileio's atomic rename (fsync, then replace)
    and reads through :func:`load_checkpoint`, so ``trainer.fit(ckpt_path=...)`` is safe too."""
    import torch
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())

        def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None) -> Any:
            return load_checkpoint(path)

    return AtomicCheckpointIO


def capture_rng() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states as tensors and plain lists."""
    import torch

    version, python_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    np_state = state["numpy"]
    keys = np.asarray(np_state["keys"].numpy(), dtype=np.uint32)
    np.random.set_state(
        (np_state["kind"], keys, np_state["pos"], np_state["has_gauss"], np_state["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def loss_attributes(loss: Any) -> dict[str, Any]:
    """A loss's plain Python attributes (flags such as a frozen meta set, the last scale); its tensors
    are buffers and travel in the state dict already."""
    return {
        key: value
        for key, value in vars(loss).items()
        if not key.startswith("_") and key != "training" and isinstance(value, _PLAIN)
    }


def resume_state(loss: Any, sampler: Any) -> dict[str, Any]:
    return {
        "rng": capture_rng(),
        "loss_attributes": loss_attributes(loss),
        "sampler_epoch": None if sampler is None else int(getattr(sampler, "epoch", 0)),
    }


def restore_resume_state(state: dict[str, Any], loss: Any, sampler: Any) -> None:
    for key, value in state.get("loss_attributes", {}).items():
        if hasattr(loss, key):
            setattr(loss, key, value)
    if sampler is not None and state.get("sampler_epoch") is not None and hasattr(sampler, "set_epoch"):
        sampler.set_epoch(state["sampler_epoch"])
    restore_rng(state["rng"])


def checked_resume_checkpoints(checkpoint_dir: Path) -> Path | None:
    """The checkpoint to resume from (``last.ckpt``), after checking that every checkpoint in the folder
    loads as plain data (the final best-model restore reads ``best.ckpt``); None when there is none."""
    for path in sorted(checkpoint_dir.glob("*.ckpt")):
        load_checkpoint(path)
    last = checkpoint_dir / "last.ckpt"
    return last if last.is_file() else None


__all__ = [
    "STATE_KEY",
    "capture_rng",
    "checked_resume_checkpoints",
    "checkpoint_io_class",
    "load_checkpoint",
    "restore_resume_state",
    "restore_rng",
    "resume_state",
]
