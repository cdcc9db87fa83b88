"""Benchmark commands; their figures go into docs/BENCHMARKS.md with machine and date."""
