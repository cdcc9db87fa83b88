"""``privtune eval``: run the privacy-utility grid resumably and (optionally) write docs/RESULTS.md.

    privtune eval --quick --report                 reduced grid (< 20 min on 2 CPU cores) + report
    privtune eval --report                         full grid (hours); re-run the same command to resume
    privtune eval --grids eta,ablation             only some grids
    privtune eval --grids headline                 the headline rows over seeds 0, 1, 2
    privtune eval --no-run --report --out a.jsonl  report only

Results go to ``--out`` (JSON lines, one row per finished experiment, keyed by config hash; default
``.privtune/eval/quick.jsonl`` or ``.privtune/eval/full.jsonl``). Data come from ``--data-dir``, else
``$PRIVTUNE_EVAL_DATA``, else ``../shared/data`` beside the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_DIR = Path(".privtune") / "eval"
GRID_NAMES = (
    "eta",
    "ablation",
    "split",
    "hops",
    "attribute",
    "eta-fine",
    "eta-extra",
    "headline",
    "medicine",
)  # evaluation.sweep.DEFAULT_GRIDS (not imported: no torch here)
FULL_ONLY_GRIDS = ("headline", "medicine")  # evaluation.sweep.FULL_ONLY_GRIDS: --quick runs them only when named
OTHER_GRIDS = ("defaults", "labels", "choice", "label-dp")  # evaluation.sweep.GRIDS beyond the default list
QUICK_BUDGET_MIN = 16.0  # no new experiment starts after this (the longest quick one: ~3 min): < 20 min in all


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``eval`` options to ``parser`` (``privtune eval`` and ``python -m evaluation.cli``); imports nothing heavy."""
    parser.add_argument("--quick", action="store_true", help="reduced grid: fewer texts, epochs and etas")
    parser.add_argument(
        "--out", type=Path, default=None, help="results JSONL (None: .privtune/eval/{quick,full}.jsonl)"
    )
    parser.add_argument(
        "--data-dir", default=None, help="evaluation data (None: $PRIVTUNE_EVAL_DATA, else ../shared/data)"
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_DIR / "cache", help="prototype / neighbour cache")
    parser.add_argument(
        "--grids",
        default=None,
        help=f"comma-separated subset of {','.join(GRID_NAMES + OTHER_GRIDS)} (None: {','.join(GRID_NAMES)}; "
        f"with --quick without {','.join(FULL_ONLY_GRIDS)})",
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help=f"start no experiment after this many minutes (None: {QUICK_BUDGET_MIN:g} with --quick, no limit "
        "otherwise); the rest runs on the next invocation",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (on a shared 2-core machine 2 threads ran ~3x slower under contention)",
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="run only every N-th config starting at K (0-based), e.g. two processes with 0/2 and 1/2 on one "
        "results file; finished rows are shared through the file (None: all configs)",
    )
    parser.add_argument("--report", action="store_true", help="write the results document after running")
    parser.add_argument("--report-out", type=Path, default=Path("docs") / "RESULTS.md", help="the results document")
    parser.add_argument(
        "--report-include",
        type=Path,
        action="append",
        default=[],
        help="further JSONL files to include in the report (repeatable)",
    )
    parser.add_argument("--no-run", action="store_true", help="do not run experiments (e.g. report only)")
    parser.add_argument("--list", action="store_true", help="print the grid's configs and whether each is done")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the chosen grids into ``args.out`` (skipping finished rows), then report if asked; exit code."""
    from evaluation.harness import Resources
    from evaluation.sweep import ResultStore, Runner, grid, shard

    out = args.out or DEFAULT_DIR / ("quick.jsonl" if args.quick else "full.jsonl")
    names = [g for g in args.grids.split(",") if g] if args.grids else None
    configs = grid(quick=args.quick, names=names)
    if args.shard:
        try:
            index, count = (int(x) for x in args.shard.split("/"))
            configs = shard(configs, index, count)
        except ValueError as exc:
            print(f"[eval] --shard must be K/N with 0 <= K < N, got {args.shard!r} ({exc})", file=sys.stderr)
            return 2
    store = ResultStore(out)
    if args.list:
        for c in configs:
            print(json.dumps({"key": c.key(), "done": c.key() in store, "dataset": c.dataset, "label": c.label()}))
        return 0
    status = 0
    if not args.no_run:
        import torch

        torch.set_num_threads(max(1, args.threads))
        budget = args.budget_minutes if args.budget_minutes is not None else (QUICK_BUDGET_MIN if args.quick else None)
        started = time.perf_counter()
        runner = Runner(store, Resources(args.cache_dir, args.data_dir))
        counts = runner.run_all(configs, budget_s=None if budget is None else budget * 60)
        minutes = (time.perf_counter() - started) / 60
        print(f"[eval] {out}: {counts['ran']} run, {counts['done']} already done, {counts['failed']} failed, "
              f"{counts['left']} left for the next run; {minutes:.1f} min", file=sys.stderr)  # fmt: skip
        status = 1 if counts["failed"] else 0
    if args.report:
        from evaluation.report import load_rows, render

        sources = [out, *args.report_include]
        rows = load_rows([p for p in sources if Path(p).exists()])
        if not rows:
            print(f"[eval] no finished rows in {', '.join(map(str, sources))}; no report written", file=sys.stderr)
            return status or 1
        render(rows, args.report_out, sources=[str(p) for p in sources])
        print(f"[eval] wrote {args.report_out} from {len(rows)} rows", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    """``python -m evaluation.cli [options]`` (same as ``privtune eval``)."""
    parser = argparse.ArgumentParser(
        prog="privtune eval",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser = add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
