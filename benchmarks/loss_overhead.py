"""Forward + backward time per step of the magnitude and spread losses against cross-entropy.

    python benchmarks/loss_overhead.py [--batch-sizes 64 256 1024] [--classes 10] [--repeats 200] [--json]

For each batch size, the step is: loss(logits, target) and backward to the logits (what a loss
adds to a training step; the model's own cost is the same for every loss). Times are medians over
``--repeats`` steps after warm-up (minima too: on a busy machine they are the more stable number),
single-threaded by default (``--threads``) so that the numbers are comparable on a shared machine.
The acceptance target: at batch 256 the magnitude loss adds at most 5 ms per step over cross-entropy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from rich.console import Console
from rich.table import Table

from matcard.losses import build

LOSSES = ("ce", "magnitude", "spread")
TARGET_BATCH, TARGET_MS = 256, 5.0


def time_step(
    name: str, batch_size: int, n_classes: int, repeats: int, warmup: int = 10
) -> tuple[float, float]:
    """(median, min) seconds of one forward+backward of ``name`` on a [batch_size, n_classes] batch."""
    generator = torch.Generator().manual_seed(batch_size)
    # the reference form (invariant - 1, differentiated through the solve); the default weight
    # mode of magnitude / spread is cheaper (no backward through Z)
    params = {"mode": "replace"} if name in ("magnitude", "spread") else {}
    loss = build(name, [batch_size] * n_classes, **params)
    logits = torch.randn(batch_size, n_classes, generator=generator).requires_grad_(True)
    target = torch.randint(0, n_classes, (batch_size,), generator=generator)
    samples: list[float] = []
    for i in range(warmup + repeats):
        logits.grad = None
        started = time.perf_counter()
        loss(logits, target).backward()
        elapsed = time.perf_counter() - started
        if i >= warmup:
            samples.append(elapsed)
    return statistics.median(samples), min(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads [1]")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    if not console.is_terminal:  # keep every column when piped or logged
        console.width = max(console.width, 120)

    rows = []
    for batch_size in args.batch_sizes:
        repeats = max(10, args.repeats // max(1, batch_size // 256)) if batch_size > 256 else args.repeats
        times = {name: time_step(name, batch_size, args.classes, repeats) for name in LOSSES}
        row: dict[str, float] = {"batch_size": batch_size}
        row.update({f"{name}_ms": 1e3 * median for name, (median, _) in times.items()})
        row.update({f"{name}_min_ms": 1e3 * fastest for name, (_, fastest) in times.items()})
        row["magnitude_overhead_ms"] = row["magnitude_ms"] - row["ce_ms"]
        row["spread_overhead_ms"] = row["spread_ms"] - row["ce_ms"]
        rows.append(row)

    table = Table(
        title=f"Loss forward+backward per step ({args.classes} classes, {args.threads} thread(s), median)"
    )
    columns = ("batch", "CE ms", "magnitude ms", "spread ms", "magnitude - CE", "spread - CE", "min C/M/S ms")
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        cells = [f"{row[key]:.3f}" for key in ("ce_ms", "magnitude_ms", "spread_ms")]
        cells += [f"{row[key]:+.3f}" for key in ("magnitude_overhead_ms", "spread_overhead_ms")]
        cells.append(
            "/".join(f"{row[key]:.2f}" for key in ("ce_min_ms", "magnitude_min_ms", "spread_min_ms"))
        )
        table.add_row(str(row["batch_size"]), *cells)
    console.print(table)
    at_target = [r for r in rows if r["batch_size"] == TARGET_BATCH]
    ok = True
    if at_target:
        overhead = at_target[0]["magnitude_overhead_ms"]
        ok = overhead <= TARGET_MS
        verdict = "[green]met[/]" if ok else "[red]NOT met[/]"
        console.print(
            f"target: magnitude adds <= {TARGET_MS} ms at batch {TARGET_BATCH}: {overhead:.2f} ms, {verdict}"
        )
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
