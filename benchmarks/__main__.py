"""`python -m benchmarks SUITE`: the same command as `adapterhub bench SUITE`."""

import sys

from benchmarks.cli import main

sys.exit(main())
