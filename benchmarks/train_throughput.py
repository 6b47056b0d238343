"""Training throughput of CGCNN on mp20-biternary: graphs per second with CE and with the magnitude loss.

Both losses train the same model from the same initialisation on the same batches through matcard's
real Lightning training module, so the difference is the cost of the loss (one (B+1)x(B+1) Cholesky
solve per step for magnitude). The first steps of each run are warm-up and are not timed.

    python benchmarks/train_throughput.py                      # 2048 graphs, batch 64, ce vs magnitude
    python benchmarks/train_throughput.py --losses ce,magnitude,spread --batch-size 256 --json

Data: the real mp20-biternary files, read through matcard's registry from ``MATCARD_MIRROR`` or, by
default, from ``../shared/data`` beside the repository; featurization is cached.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-graphs", type=int, default=2048, help="training graphs (stratified subset)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per loss (the first steps are warm-up)")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--losses", default="ce,magnitude", help="comma-separated registered loss names")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: idle cores)")
    parser.add_argument("--accelerator", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    return parser.parse_args(argv)


def load_graphs(n_graphs: int, seed: int) -> tuple[list, list[str]]:
    from matcard.datasets import load_dataset
    from matcard.featurize import GraphFeaturizer
    from matcard.training import _stratified_subset, featurize_for

    if "MATCARD_MIRROR" not in os.environ and SHARED_DATA.is_dir():
        os.environ["MATCARD_MIRROR"] = SHARED_DATA.as_uri()
    dataset = load_dataset("mp20-biternary")
    labels = dataset.labels("crystal_system")
    graphs, positions, _ = featurize_for(
        dataset, GraphFeaturizer(), labels.y, workers=1, cache=True, progress=True
    )
    chosen = _stratified_subset(labels.y[positions], min(n_graphs, len(graphs)), seed)
    return [graphs[i] for i in chosen], list(labels.class_names)


def measure(loss_name: str, graphs: list, n_classes: int, args: argparse.Namespace) -> dict:
    import lightning as L
    import numpy as np
    import torch
    from lightning.pytorch.callbacks import Callback
    from torch_geometric.loader import DataLoader

    from matcard import losses
    from matcard.config import load_config
    from matcard.models import build_model
    from matcard.training import _lightning_module_class, cpu_threads, resolve_accelerator

    accelerator = resolve_accelerator(args.accelerator)
    torch.set_flush_denormal(True)
    if accelerator == "cpu":
        torch.set_num_threads(cpu_threads(args.threads))

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.times: list[tuple[float, int]] = []
            self.step = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if accelerator == "cuda":
                torch.cuda.synchronize()
            self._started = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if accelerator == "cuda":
                torch.cuda.synchronize()
            self.step += 1
            if self.step > args.warmup_steps:
                self.times.append((time.perf_counter() - self._started, batch.num_graphs))

    L.seed_everything(args.seed, verbose=False)
    config = load_config(overrides={"loss": loss_name, "batch_size": args.batch_size, "epochs": args.epochs})
    y = np.array([int(g.y) for g in graphs])
    model = build_model("cgcnn", graphs[0].x.shape[1], n_classes)
    loss = losses.build(loss_name, np.bincount(y, minlength=n_classes))
    module = _lightning_module_class()(model, loss, config, n_classes)
    timer = StepTimer()
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[timer],
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    loader = DataLoader(graphs, batch_size=args.batch_size, shuffle=True, drop_last=True)
    began = time.perf_counter()
    trainer.fit(module, loader)
    wall = time.perf_counter() - began
    seconds = sum(t for t, _ in timer.times)
    per_step = [n / t for t, n in timer.times]
    return {
        "loss": loss_name,
        "graphs_per_second": sum(n for _, n in timer.times) / seconds,
        "median_step_graphs_per_second": statistics.median(per_step),
        "timed_steps": len(timer.times),
        "ms_per_step": 1000 * seconds / len(timer.times),
        "wall_seconds": wall,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rich.table import Table

    from matcard.console import console
    from matcard.training import _quiet_lightning, resolve_accelerator

    _quiet_lightning()
    import warnings

    warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")  # training steps only
    graphs, class_names = load_graphs(args.n_graphs, args.seed)
    results = []
    for name in [n.strip() for n in args.losses.split(",") if n.strip()]:
        console.print(f"training CGCNN with {name} on {len(graphs)} graphs ...")
        results.append(measure(name, graphs, len(class_names), args))
    base = results[0]["graphs_per_second"]
    table = Table(
        title=f"CGCNN training throughput, mp20-biternary ({len(graphs)} graphs, batch {args.batch_size})"
    )
    for column in ("loss", "graphs/s", "ms/step", "relative to " + results[0]["loss"], "timed steps"):
        table.add_column(column, justify="left" if column == "loss" else "right")
    for r in results:
        r["relative"] = r["graphs_per_second"] / base
        table.add_row(
            r["loss"],
            f"{r['graphs_per_second']:.0f}",
            f"{r['ms_per_step']:.1f}",
            f"{r['relative']:.2f}",
            str(r["timed_steps"]),
        )
    console.print(table)
    import torch

    summary = {
        "n_graphs": len(graphs),
        "batch_size": args.batch_size,
        "device": resolve_accelerator(args.accelerator),
        "threads": torch.get_num_threads(),
        "results": results,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:  # the side-by-side numbers on stdout as plain text too
        print("  ".join(f"{r['loss']}: {r['graphs_per_second']:.0f} graphs/s" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
