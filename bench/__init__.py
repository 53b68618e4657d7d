"""Benchmarks (`make bench`): each ``bench/bench_*.py`` measures a target against its baseline.

Not part of `make test`. Each module exposes ``run(ctx: BenchContext) -> dict`` and the runner
writes the result to ``reports/bench/<name>.json``; figures are ratios against a baseline measured
in the same run, never absolute targets.
"""
