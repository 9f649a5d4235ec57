"""adapterhub benchmarks: a small harness (harness.py, report.py), suites discovered by name (suites/), and
recorded results (results/). Run as `adapterhub bench SUITE` or `python -m benchmarks SUITE`; see README.md."""
