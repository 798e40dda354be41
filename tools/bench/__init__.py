"""Benchmarks (not shipped): ``python tools/bench/spool_bench.py [--quick] [--json]``."""
