"""A training run's directory and its ``run.json``: which config a run uses, whether a directory may be
trained into, resumed or overwritten, and an honest status (running / complete / failed + reason).

A directory that holds a run refuses a new one unless ``overwrite`` is given; a run that failed
before its first checkpoint holds nothing worth keeping and never blocks its directory.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matcard._version import __version__
from matcard.config import TrainConfig, config_from_any, load_config
from matcard.console import console, escape
from matcard.errors import ConfigError, UsageError
from matcard.fileio import atomic_write_json

# Settings that may differ when a run is resumed (they do not change what is being trained).
RESUMABLE_CHANGES = {
    "trainer.epochs", "trainer.devices", "trainer.accelerator", "trainer.num_workers", "out",
    "decision.enabled", "decision.objective", "decision.alpha",  # fitted after training
}  # fmt: skip
# What a run writes; --overwrite removes exactly these (never other files a user put there).
RUN_FILES = (
    "config.yaml",
    "run.json",
    "history.csv",
    "metrics.json",
    "predictions.parquet",
    "confusion_matrix.png",
    "per_class_recall.png",
    "failures.csv",
)
RUN_FOLDERS = ("checkpoints", "splits", "model")


def global_rank_from_env() -> int:
    """This process's rank before Lightning sets up (Lightning's launcher / torchrun / SLURM env)."""
    for variable in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    local = os.environ.get("LOCAL_RANK", "0")
    node = os.environ.get("NODE_RANK", "0")
    if local.isdigit() and node.isdigit() and (int(local) or int(node)):
        devices = int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0) or 1
        return int(node) * devices + int(local)
    return 0


def read_run_json(run_dir: Path) -> dict[str, Any]:
    try:
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def run_status(run_dir: Path) -> str | None:
    return read_run_json(run_dir).get("status")


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / "checkpoints" / "last.ckpt").is_file()


def failed_before_training(run_dir: Path) -> bool:
    """A run that failed before its first checkpoint: nothing to resume, nothing to keep."""
    return run_status(run_dir) == "failed" and not has_checkpoint(run_dir)


def clear_run(run_dir: Path) -> None:
    """Remove the files and folders a run writes (and only those)."""
    for name in RUN_FILES:
        if not (run_dir / name).is_dir():  # a folder of that name is not ours to delete
            (run_dir / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)


def write_run_json(
    run_dir: Path,
    config: TrainConfig,
    status: str,
    resumed: bool,
    seconds: float | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    import platform

    info = {
        "status": status,
        "matcard_version": __version__,
        "python": platform.python_version(),
        "resumed": resumed,
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": None if seconds is None else round(seconds, 2),
        "dataset": config.data.dataset,
        "model": config.model.name,
        "loss": config.loss.name,
        **(extra or {}),
    }
    atomic_write_json(run_dir / "run.json", info)


def mark_failed(run_dir: Path, error: BaseException) -> None:
    """Record why a run stopped; keeps what run.json already says (versions, dataset, ...)."""
    if not run_dir.is_dir():
        return
    reason = str(error).strip() or type(error).__name__
    interrupted = isinstance(error, KeyboardInterrupt)
    info = {
        **read_run_json(run_dir),
        "status": "interrupted" if interrupted else "failed",
        "reason": reason if not interrupted else "interrupted (Ctrl-C)",
        "error_type": type(error).__name__,
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "resumable": has_checkpoint(run_dir),
    }
    atomic_write_json(run_dir / "run.json", info)


def _default_out(config: TrainConfig) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    dataset = Path(config.data.dataset).stem if os.sep in config.data.dataset else config.data.dataset
    return str(Path("runs") / f"{dataset}-{config.model.name}-{config.loss.name}-{stamp}")


def _changed_fields(saved: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(saved) | set(new)):
        path = f"{prefix}{key}"
        a, b = saved.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_fields(a, b, path + ".")
        elif a != b:
            changed.append(path)
    return changed


def _refuse_occupied(run_dir: Path) -> None:
    status = run_status(run_dir) or "unknown"
    what = {
        "running": "a run with status 'running' (killed, or still training elsewhere)",
        "complete": "a complete run",
        "failed": "a failed run",
        "interrupted": "an interrupted run",
    }.get(status, f"a run (status {status!r})")
    raise UsageError(
        f"{run_dir} already holds {what}; pass --resume to continue it, --overwrite to discard it and "
        "start again, or choose another --out"
    )


def resolve_run(
    config: TrainConfig | dict[str, Any] | str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    **overrides: Any,
) -> tuple[TrainConfig, Path, bool]:
    """(config, run_dir, resuming).

    Without ``resume`` a directory that already holds a run is refused (unless ``overwrite``, or the
    run failed before its first checkpoint). With ``resume`` the run's saved config.yaml is
    authoritative: a config or overrides given now may only change fields in RESUMABLE_CHANGES
    (e.g. more epochs, other devices); anything else fails naming the field.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if resume and overwrite:
        raise UsageError("--resume continues a run and --overwrite discards it: pass one of them")
    if not resume:
        resolved = config_from_any(config, **overrides)
        run_dir = Path(resolved.out or _default_out(resolved))
        occupied = (run_dir / "config.yaml").is_file() or (run_dir / "run.json").is_file()
        if occupied and not overwrite and not failed_before_training(run_dir) and global_rank_from_env() == 0:
            _refuse_occupied(run_dir)
        return resolved.model_copy(update={"out": str(run_dir)}), run_dir, False

    out = overrides.get("out")
    if out is None and config is not None:
        out = config_from_any(config).out
    if out is None:
        raise UsageError("--resume needs the run directory (--out RUN)")
    run_dir = Path(out)
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise UsageError(
            f"--resume: no run to resume at {run_dir} (config.yaml missing); train without --resume"
        )
    saved = load_config(saved_path)
    if config is not None:
        wanted = config_from_any(config, **overrides)
    else:
        wanted = load_config(base=saved.model_dump(mode="json"), overrides=overrides)
    wanted = wanted.model_copy(update={"out": saved.out})
    if failed_before_training(run_dir):
        # nothing was trained: the corrected settings start the run afresh
        if global_rank_from_env() == 0:
            console.print(f"[yellow]{escape(run_dir)} failed before its first epoch; starting it afresh[/]")
        return wanted, run_dir, False
    bad = [
        name
        for name in _changed_fields(saved.model_dump(mode="json"), wanted.model_dump(mode="json"))
        if name not in RESUMABLE_CHANGES
    ]
    if bad:
        raise ConfigError(
            f"--resume: {', '.join(bad)} differ from {saved_path}; only "
            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change when resuming (or pass --overwrite "
            "instead of --resume to start again, or choose another --out)"
        )
    return wanted, run_dir, True


__all__ = [
    "RESUMABLE_CHANGES",
    "clear_run",
    "failed_before_training",
    "global_rank_from_env",
    "has_checkpoint",
    "mark_failed",
    "read_run_json",
    "resolve_run",
    "run_status",
    "write_run_json",
]
