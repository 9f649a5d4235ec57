"""adapterhub benchmarks: a small harness (harness.py, report.py), suites discovered by name (suites/), and
recorded results (results/). Run as `adapterhub bench SUITE` or `python -m benchmarks SUITE`; see README.md."""

from pathlib import Path

DEFAULT_OUTPUT = Path("bench-results")
"""Where results go unless ``--output`` says otherwise: relative to the current directory (the figures recorded in
the repository were written with ``--output benchmarks/results``)."""
