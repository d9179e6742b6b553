"""Benchmarks for modelreg; run as scripts (`python bench/catalog.py`), never in CI."""
