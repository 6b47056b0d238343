"""Copy finished benchmark studies into docs/benchmarks.md and docs/benchmarks/ (tables and plots).

    python benchmarks/publish_docs.py [--runs runs/benchmarks] [--docs docs]

For each study folder under ``--runs`` that holds a ``table.md`` (written by ``matcard benchmark``),
the block between ``<!-- study:NAME -->`` and ``<!-- /study:NAME -->`` in ``docs/benchmarks.md`` is
replaced by that table, the study's plots are copied to ``docs/benchmarks/NAME-*.png`` and linked
below it. Everything outside the markers (the reading, the commands) is left as written, so the
page's prose and its numbers can be checked against each other after every regeneration.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLOTS = {
    "metrics.png": "test metrics, mean ± std over seeds",
    "paired_vs_baseline.png": "paired differences against CE with bootstrap CIs",
    "per_class_recall.png": "per-class recall (mean over seeds)",
}


def study_block(name: str, study_dir: Path, docs: Path) -> str:
    table = (study_dir / "table.md").read_text(encoding="utf-8").strip()
    table = re.sub(r"^## .*\n", "", table).strip()  # the page has its own headings
    images = []
    for plot, caption in PLOTS.items():
        source = study_dir / plot
        if source.is_file():
            target = docs / "benchmarks" / f"{name}-{plot}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            images.append(f"![{name}: {caption}](benchmarks/{target.name})")
    return f"<!-- study:{name} -->\n{table}\n\n" + "\n".join(images) + f"\n<!-- /study:{name} -->"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "benchmarks")
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    args = parser.parse_args(argv)
    page_path = args.docs / "benchmarks.md"
    page = page_path.read_text(encoding="utf-8")
    published = []
    for study_dir in sorted(p for p in args.runs.iterdir() if (p / "table.md").is_file()):
        name = study_dir.name
        pattern = re.compile(rf"<!-- study:{re.escape(name)} -->.*?<!-- /study:{re.escape(name)} -->", re.S)
        if not pattern.search(page):
            print(f"skipped {name}: no <!-- study:{name} --> block in {page_path}", file=sys.stderr)
            continue
        block = study_block(name, study_dir, args.docs)
        page = pattern.sub(lambda _, block=block: block, page)  # a function: no backslash escapes
        published.append(name)
    tmp = page_path.with_suffix(".md.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(page_path)
    print(f"published {', '.join(published) or 'nothing'} into {page_path}")
    return 0 if published else 1


if __name__ == "__main__":
    raise SystemExit(main())
