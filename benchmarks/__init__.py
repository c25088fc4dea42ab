"""Benchmark scripts and what they share (`common`, `tiny`, `selection_report`).

Run a script from the repository root, as a file (`python benchmarks/forget_curves.py ...`) or as a module
(`python -m benchmarks.forget_curves ...`). Not part of the installed package.
"""
