"""Benchmarks: ``python -m benchmarks.cpu_ratios`` and ``pytest benchmarks/ --benchmark-only``."""
