"""Benchmarks: ``python -m benchmarks.cpp_ratios`` and ``pytest benchmarks/ --benchmark-only``."""
