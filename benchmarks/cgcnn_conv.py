"""CGCNN's convolution: matcard's FactoredCGConv against torch-geometric's CGConv, side by side.

Both models hold the same weights (CGConv's state dict); the batches are real MP-20 crystal graphs.
Measured in one run, interleaved (reference, factored, reference, ...) so that load on a shared
machine falls on both: inference (``torch.inference_mode``, batch 256: what ``matcard screen`` does)
and a training step (forward + backward, batch 64), graphs per second and the ratio.

    python benchmarks/cgcnn_conv.py [--n-graphs 2048] [--repeats 3] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _models(node_dim: int, n_classes: int):  # type: ignore[no-untyped-def]
    import torch
    from torch import nn
    from torch_geometric.nn import CGConv

    from matcard.models.cgcnn import CGCNN

    torch.manual_seed(0)
    factored = CGCNN(node_dim, n_classes)
    reference = CGCNN(node_dim, n_classes)
    reference.convs = nn.ModuleList(
        CGConv(conv.channels, dim=conv.dim, aggr="add", batch_norm=True) for conv in factored.convs
    )
    reference.load_state_dict(factored.state_dict())
    return {"torch_geometric CGConv": reference, "FactoredCGConv": factored}


def _rate(model, batches, train: bool) -> float:  # type: ignore[no-untyped-def]
    import torch

    model.train(train)
    started = time.perf_counter()
    n = 0
    for batch in batches:
        if train:
            logits, _ = model(batch)
            torch.nn.functional.cross_entropy(logits, batch.y.view(-1)).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                model(batch)
        n += batch.num_graphs
    return n / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-graphs", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args(argv)

    import torch
    from rich.table import Table
    from torch_geometric.loader import DataLoader
    from train_throughput import load_graphs

    from matcard.console import console, print_wide

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    graphs, class_names = load_graphs(args.n_graphs, seed=0)
    models = _models(graphs[0].x.shape[1], len(class_names))
    modes = {"inference (batch 256)": (256, False), "training step (batch 64)": (64, True)}
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeats):
        for mode, (batch_size, train) in modes.items():
            batches = list(DataLoader(graphs, batch_size=batch_size))
            for name, model in models.items():
                rate = _rate(model, batches, train)
                best[(mode, name)] = max(best.get((mode, name), 0.0), rate)
    rows = []
    for mode in modes:
        reference, factored = (best[(mode, name)] for name in models)
        rows.append({"mode": mode, "reference_per_s": reference, "factored_per_s": factored,
                     "speedup": factored / reference})  # fmt: skip
    report = {"n_graphs": len(graphs), "threads": args.threads, "repeats": args.repeats, "rows": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    table = Table(title=f"CGCNN convolution, {len(graphs)} MP-20 graphs, {args.threads} thread(s)")
    for column in ("mode", "CGConv graphs/s", "FactoredCGConv graphs/s", "speedup"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for row in rows:
        table.add_row(row["mode"], f"{row['reference_per_s']:,.0f}", f"{row['factored_per_s']:,.0f}",
                      f"{row['speedup']:.2f}x")  # fmt: skip
    print_wide(table)
    console.print("same weights, same batches, interleaved rounds (best of each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
