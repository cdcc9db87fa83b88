"""Turn result rows (JSON lines from ``evaluation.sweep``) into ``docs/RESULTS.md`` tables and PNG plots.

    python -m evaluation.report results.jsonl [more.jsonl ...] --out docs/RESULTS.md

Promises: ``main`` reads the finished rows of the given files, writes the document (``render``) and
returns the exit code (argparse's 2 when no file holds a finished row).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evaluation.report.document import render
from evaluation.report.queries import load_rows

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m evaluation.report RESULTS.jsonl [...] [--out docs/RESULTS.md]``."""
    parser = argparse.ArgumentParser(prog="python -m evaluation.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="JSONL files written by the sweep")
    parser.add_argument("--out", type=Path, default=Path("docs/RESULTS.md"))
    parser.add_argument("--plots-dir", type=Path, default=None, help="where the PNG plots go (default: --out's folder)")
    parser.add_argument(
        "--harness-version", type=int, default=None, help="render rows of this harness version (default: current)"
    )
    args = parser.parse_args(argv)
    rows = load_rows(args.results, version=args.harness_version)
    if not rows:
        parser.error("no finished rows in " + ", ".join(args.results))
    render(rows, args.out, args.plots_dir, sources=args.results)
    print(f"wrote {args.out} from {len(rows)} rows")
    return 0
