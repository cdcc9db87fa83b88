"""``python -m evaluation.report RESULTS.jsonl [...] [--out docs/RESULTS.md]`` (see ``evaluation.report.cli``)."""

from evaluation.report.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
