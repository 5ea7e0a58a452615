"""Benchmarks of the correction ledger against the one-off script it replaces and the raw-SQL floor.

``python -m benchmarks.run --visits N`` builds synthetic data in a dedicated database, runs
every measured step in a fresh subprocess (so each step's peak RSS is its own), and writes the
table of medians and ratios to ``docs/benchmarks.md``.
"""
