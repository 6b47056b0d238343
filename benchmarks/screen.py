"""Screening benchmark: end-to-end structures/s on mp20-biternary beside the CIF-parse-only floor,
and peak RSS when screening all 14,258 structures against a tenth of them (memory must stay flat).

    python benchmarks/screen.py [--model RUN/model] [--limit N] [--workers W] [--parser both] [--json]

The mp20-biternary CSV files (CIF strings) come through the dataset registry's downloader, so
``MATCARD_MIRROR`` is honoured. Every measurement runs in a fresh Python process; its peak RSS is
read from the kernel (``wait4``: the largest of that process and the reader processes it reaped).

* parse-only: ``matcard.structures.iter_structures`` over the CSVs, consuming the records (the
  floor: a screen must parse every CIF too). Either parser's reader workers hand records back as
  arrays (``CompactRecord``), which is what screening and the graph featurizer consume; the pymatgen
  path builds a ``Structure`` in the worker because that is how it parses, the fast path never does.
  Measured twice per parser: the records as yielded, and with each record's pymatgen ``Structure``
  built in the caller (``len(record.structure)``), the cost a user pays who asks for the objects.
* end-to-end: ``matcard.screening.screen`` over the same CSVs into a Parquet file: parse,
  featurize with the bundle's featurizer, predict, flag, write shards, merge.

``--parser both`` (default) measures the fast CIF path (gemmi, pymatgen fallback) and the pymatgen
reference path in the same run, through ``MATCARD_CIF_PARSER``, and prints their ratios.

Without ``--model`` the model is a CGCNN with the training defaults and seeded weights, saved and
reloaded as a real bundle: inference costs the same as for a trained model of that architecture.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ACCEPT_RATIO = 0.5  # end-to-end must reach at least half the parse-only rate
ACCEPT_RSS_GROWTH_MB = 200.0  # full screen vs a tenth of it


# --------------------------------------------------------------------------- child measurements


def _warm_imports() -> None:
    """Import the parsers and the table reader before the clock starts: the rates are steady-state,
    not interpreter start-up (pymatgen's import alone is a second or two, and pandas, imported by the
    CSV reader on first use, about one: a large share of a --limit run on the fast path)."""
    import gemmi  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import pymatgen.core
    import pymatgen.io.cif
    import pymatgen.io.vasp  # noqa: F401


def _child_parse(mode: str, inputs: list[str]) -> dict[str, Any]:
    from matcard.structures import StructureRecord, iter_structures

    _warm_imports()
    build = mode == "structures"
    started = time.perf_counter()
    n_records = n_failures = 0
    for item in iter_structures(*inputs):
        if isinstance(item, StructureRecord):
            if build:  # the pymatgen objects, built in this process (see the module docstring)
                len(item.structure)
            n_records += 1
        else:
            n_failures += 1
    seconds = time.perf_counter() - started
    return {"n": n_records + n_failures, "n_failed": n_failures, "seconds": seconds}


def _child_screen(inputs: list[str], model_path: str, out: str, workers: int) -> dict[str, Any]:
    from matcard.bundle import load_model
    from matcard.screening import screen

    model = load_model(model_path)
    _warm_imports()
    started = time.perf_counter()
    result = screen(model, inputs, out, workers=workers, overwrite=True, progress=False)
    seconds = time.perf_counter() - started
    return {"n": result.n_predicted + result.n_failed, "n_failed": result.n_failed, "seconds": seconds}


def _run_child(args: list[str], parser: str) -> dict[str, Any]:
    """Run this script as a child measurement; return its JSON plus its peak RSS in MB."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MATCARD_CIF_PARSER": parser},
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = process.stdout.read(), process.stderr.read()  # type: ignore[union-attr]
    if process.returncode != 0:
        raise SystemExit(f"benchmark step {args[0]} failed (exit {process.returncode}):\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024.0  # Linux reports KiB
    return result


# --------------------------------------------------------------------------- setup


SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _mp20_files() -> list[Path]:
    """The dataset's CSV files through the registry downloader (verified by sha256, cached).

    Mirror: ``MATCARD_MIRROR`` if set, else ``../shared/data`` beside a checkout when present.
    """
    from matcard.datasets.download import download_dataset
    from matcard.datasets.registry import get_spec

    mirror = os.environ.get("MATCARD_MIRROR") or (SHARED_DATA.as_uri() if SHARED_DATA.is_dir() else None)
    return download_dataset(get_spec("mp20-biternary"), mirror=mirror, progress=False)


def _head_csv(files: list[Path], n_rows: int, directory: Path) -> Path:
    """The first ``n_rows`` rows of the dataset's CSVs, as one CSV (the small comparison run)."""
    import pandas as pd

    frames, remaining = [], n_rows
    for path in files:
        with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as fh:
            frame = pd.read_csv(fh, nrows=remaining)
        frames.append(frame)
        remaining -= len(frame)
        if remaining <= 0:
            break
    target = directory / f"mp20_head_{n_rows}.csv"
    pd.concat(frames).to_csv(target, index=False)
    return target


def _seeded_model(directory: Path) -> Path:
    """CGCNN with the training defaults (methods §7) and seeded weights, as a real bundle."""
    import torch

    from matcard.bundle import save_bundle
    from matcard.featurize import GraphFeaturizer
    from matcard.models import build_model

    torch.manual_seed(0)
    featurizer = GraphFeaturizer()
    classes = ["triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic"]
    model = build_model("cgcnn", featurizer.node_dim, len(classes))
    return save_bundle(
        directory / "model",
        model,
        model_name="cgcnn",
        model_params={},
        in_dim=featurizer.node_dim,
        featurizer_config={"kind": "graph", **featurizer.config.model_dump()},
        class_names=classes,
        class_counts=[1] * len(classes),
    )


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model bundle or run directory (default: seeded default CGCNN)")
    parser.add_argument("--limit", type=int, default=None, help="screen only the first N structures")
    parser.add_argument("--workers", type=int, default=1, help="screen --workers (local processes)")
    parser.add_argument(
        "--parser", choices=("both", "fast", "pymatgen"), default="both", help="CIF parser(s) to measure"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each timed step per parser, interleaved (medians)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # a measurement in a fresh process
        kind, *rest = args.child
        if kind == "parse":
            mode, *inputs = rest
            print(json.dumps(_child_parse(mode, inputs)))
        else:
            model_path, out, workers, *inputs = rest
            print(json.dumps(_child_screen(inputs, model_path, out, int(workers))))
        return

    from matcard.console import console

    parsers = ("fast", "pymatgen") if args.parser == "both" else (args.parser,)
    with tempfile.TemporaryDirectory(prefix="matcard-bench-screen-") as tmp:
        directory = Path(tmp)
        files = _mp20_files()
        inputs = [_head_csv(files, args.limit, directory)] if args.limit is not None else files
        model_path = Path(args.model) if args.model else _seeded_model(directory)
        model_label = str(args.model) if args.model else "seeded CGCNN (training defaults)"
        runs = _interleaved_runs(parsers, inputs, directory, model_path, args.workers, args.repeats)
        reports = [
            _summary(parser, runs[parser], files, directory, model_path, args.workers) for parser in parsers
        ]
    for report in reports:
        report.update(dataset="mp20-biternary", model=model_label, workers=args.workers, repeats=args.repeats)
        _print_table(report)
    combined: dict[str, Any] = {"runs": reports}
    if len(reports) == 2:
        fast, ref = reports
        combined["parse_speedup"] = round(fast["parse_only_per_s"] / ref["parse_only_per_s"], 2)
        combined["parse_to_structures_speedup"] = round(
            fast["parse_to_structures_per_s"] / ref["parse_to_structures_per_s"], 2
        )
        combined["end_to_end_speedup"] = round(fast["end_to_end_per_s"] / ref["end_to_end_per_s"], 2)
        # the same ratios per round (one run of each parser, back to back): their spread is the noise
        combined["parse_speedup_per_round"] = [
            round(a / b, 2)
            for a, b in zip(fast["parse_only_runs_per_s"], ref["parse_only_runs_per_s"], strict=True)
        ]
        # paired: the median of the rounds' ratios (within a round the two runs are back to back)
        combined["parse_speedup_paired"] = round(statistics.median(combined["parse_speedup_per_round"]), 2)
        console.print(
            f"fast / pymatgen (medians of {args.repeats}): parse-only {combined['parse_speedup']:.2f}x, "
            f"paired {combined['parse_speedup_paired']:.2f}x "
            f"(per round {', '.join(f'{r:.2f}x' for r in combined['parse_speedup_per_round'])}; "
            f"{combined['parse_to_structures_speedup']:.2f}x with Structure objects), "
            f"end-to-end {combined['end_to_end_speedup']:.2f}x"
        )
    if args.json:
        print(json.dumps(combined if len(reports) == 2 else reports[0], indent=2))


_STEPS = ("records", "structures", "screen")  # parse-only as yielded, with Structure objects, full screen


def _interleaved_runs(
    parsers: tuple[str, ...],
    inputs: list[Path],
    directory: Path,
    model_path: Path,
    workers: int,
    repeats: int,
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every timed step ``repeats`` times, the parsers back to back within each round: this machine's
    speed drifts by ~15 % over minutes, and interleaving lets that drift reach both parsers alike."""
    from matcard.console import console

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {p: {step: [] for step in _STEPS} for p in parsers}
    for round_index in range(repeats):
        for step in _STEPS:
            for parser in parsers:
                console.print(f"[bold]round {round_index + 1}/{repeats}[/]: {parser} {step} ...")
                if step == "screen":
                    out = str(directory / "full.parquet")
                    args = ["screen", str(model_path), out, str(workers), *map(str, inputs)]
                else:
                    args = ["parse", step, *map(str, inputs)]
                runs[parser][step].append(_run_child(args, parser))
    return runs


def _rates(runs: list[dict[str, Any]]) -> list[float]:
    return [round(run["n"] / run["seconds"], 1) for run in runs]


def _summary(
    parser: str,
    runs: dict[str, list[dict[str, Any]]],
    files: list[Path],
    directory: Path,
    model_path: Path,
    workers: int,
) -> dict[str, Any]:
    """Median rates of one parser's runs, and a tenth-size screen beside the full one (memory)."""
    from matcard.console import console

    n_total = runs["records"][0]["n"]
    small_n = max(1, round(n_total / 10))
    small_input = _head_csv(files, small_n, directory)
    console.print(f"[bold]{parser}: end-to-end[/] screen of {small_n:,} structures (memory comparison) ...")
    small = _run_child(
        ["screen", str(model_path), str(directory / "small.parquet"), str(workers), str(small_input)], parser
    )
    parse_runs, built_runs, full_runs = (
        _rates(runs["records"]),
        _rates(runs["structures"]),
        _rates(runs["screen"]),
    )
    parse_rate, e2e_rate = statistics.median(parse_runs), statistics.median(full_runs)
    peak_full = max(run["peak_rss_mb"] for run in runs["screen"])
    growth = peak_full - small["peak_rss_mb"]
    return {
        "parser": parser,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "n_structures": n_total,
        "n_failed": runs["screen"][0]["n_failed"],
        "parse_only_per_s": parse_rate,
        "parse_only_runs_per_s": parse_runs,
        "parse_to_structures_per_s": statistics.median(built_runs),
        "parse_to_structures_runs_per_s": built_runs,
        "end_to_end_per_s": e2e_rate,
        "end_to_end_runs_per_s": full_runs,
        "ratio": round(e2e_rate / parse_rate, 3),
        "ratio_ok": e2e_rate >= ACCEPT_RATIO * parse_rate,
        "parse_only_seconds": round(statistics.median(run["seconds"] for run in runs["records"]), 2),
        "end_to_end_seconds": round(statistics.median(run["seconds"] for run in runs["screen"]), 2),
        "peak_rss_mb_full": round(peak_full, 1),
        "n_small": small["n"],
        "peak_rss_mb_small": round(small["peak_rss_mb"], 1),
        "rss_growth_mb": round(growth, 1),
        "rss_ok": growth < ACCEPT_RSS_GROWTH_MB,
        "peak_rss_mb_parse_only": round(max(run["peak_rss_mb"] for run in runs["records"]), 1),
    }


def _print_table(report: dict[str, Any]) -> None:
    from rich.table import Table

    from matcard.console import console

    table = Table(
        title=f"screening benchmark: {report['dataset']} ({report['model']}, workers={report['workers']}, "
        f"CIF parser {report['parser']})"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("structures", f"{report['n_structures']:,}")
    table.add_row("CIF parse only (floor)", f"{report['parse_only_per_s']:.1f} /s")
    table.add_row("  with Structure objects built", f"{report['parse_to_structures_per_s']:.1f} /s")
    table.add_row("end-to-end screen", f"{report['end_to_end_per_s']:.1f} /s")
    verdict = "ok" if report["ratio_ok"] else "below 0.5: prediction-bound"
    table.add_row("end-to-end / parse-only", f"{report['ratio']:.2f} ({verdict})")
    table.add_row(f"peak RSS, {report['n_structures']:,} structures", f"{report['peak_rss_mb_full']:.0f} MB")
    table.add_row(f"peak RSS, {report['n_small']:,} structures", f"{report['peak_rss_mb_small']:.0f} MB")
    verdict = "ok" if report["rss_ok"] else "ABOVE 200 MB"
    table.add_row("RSS growth", f"{report['rss_growth_mb']:.0f} MB ({verdict})")
    console.print(table)


if __name__ == "__main__":
    main()
