"""The ``adapterhub`` command line: the top layer, nothing below imports it.

``main`` (the console script) and the click group ``cli`` live in ``adapterhub.cli.main``; each other module here is
one command or command group (``registry``, ``serve``, ``merge``, ``continual``, ``zero-shot``), imported when the
command is looked up, and ``flags`` / ``output`` hold what the commands share.
"""

from adapterhub.cli.main import cli, main, run_command

__all__ = ["cli", "main", "run_command"]
