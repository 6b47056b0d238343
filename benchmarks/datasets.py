"""Dataset foundation benchmark: first / cached load of mp20-biternary, parser scaling, messy CIFs.

    python benchmarks/datasets.py [--workers 1,2] [--repeat 5] [--json]

* ``first_load_s[w]``: ``load_dataset("mp20-biternary", workers=w)`` into a fresh cache folder
  (download from ``MATCARD_MIRROR`` or upstream + parse 14,258 CIFs + write Parquet), per worker count.
  ``cifs_per_s`` and ``speedup`` (vs the first worker count) follow from it.
* ``cached_load_s``: the best of ``--repeat`` loads served from the Parquet cache (acceptance: < 1 s),
  and ``structures_s``: building all 14,258 pymatgen ``Structure`` objects from the cache.
* ``messy_inspect_s``: ``matcard inspect ../shared/data/messy_cifs --json`` in a fresh process
  (acceptance: < 60 s), with its structure and failure counts.

Timings on a shared machine are noisy; compare ratios, or rerun on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"


def run(workers: list[int], repeat: int) -> dict[str, Any]:
    from matcard.datasets import load_dataset

    if "MATCARD_MIRROR" not in os.environ and SHARED.is_dir():
        os.environ["MATCARD_MIRROR"] = SHARED.as_uri()
    result: dict[str, Any] = {"first_load_s": {}, "cifs_per_s": {}, "speedup": {}}
    cached_dir = None
    for w in workers:
        folder = tempfile.mkdtemp(prefix=f"matcard-bench-w{w}-")
        started = time.perf_counter()
        dataset = load_dataset("mp20-biternary", data_dir=folder, workers=w, progress=False)
        elapsed = time.perf_counter() - started
        result["first_load_s"][w] = round(elapsed, 2)
        result["cifs_per_s"][w] = round(len(dataset) / elapsed, 1)
        cached_dir = folder
    base = result["first_load_s"][workers[0]]
    result["speedup"] = {w: round(base / t, 2) for w, t in result["first_load_s"].items()}
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        dataset = load_dataset("mp20-biternary", data_dir=cached_dir, progress=False)
        times.append(time.perf_counter() - started)
    result["cached_load_s"] = round(min(times), 3)
    started = time.perf_counter()
    dataset.structures()
    result["structures_s"] = round(time.perf_counter() - started, 2)
    result["n_structures"] = len(dataset)
    result["class_counts"] = dataset.labels("crystal_system").class_counts()

    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "inspect", str(SHARED / "messy_cifs"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(done.stdout)
    result["messy_inspect_s"] = round(time.perf_counter() - started, 2)
    result["messy"] = {
        "read": summary["n_structures"],
        "failed": summary["n_failed"],
        "skipped": len(summary["skipped"]),
    }
    result["accept"] = {
        "cached_load_under_1s": result["cached_load_s"] < 1.0,
        "messy_under_60s": result["messy_inspect_s"] < 60,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="comma list of parser process counts")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    result = run([int(w) for w in args.workers.split(",")], args.repeat)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key:>18}: {value}")


if __name__ == "__main__":
    main()
