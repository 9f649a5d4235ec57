"""``python -m adapterhub.cli``: the same as the ``adapterhub`` console script (torchrun launches it this way)."""

import sys

from adapterhub.cli.main import main

sys.exit(main())
