"""The benchmark harness as an adapterhub plugin: ``adapterhub_commands`` adds ``adapterhub bench``.

The core does not know the harness: it finds this module through the ``adapterhub`` entry point of the
``adapterhub-bench`` distribution, like any other plugin. Imported by every ``adapterhub --help``, so it imports
nothing of the harness until the command is added.
"""

from __future__ import annotations

import click

import adapterhub


@adapterhub.hookimpl
def adapterhub_commands(cli: click.Group) -> None:
    from benchmarks.cli import bench_command

    cli.add_command(bench_command)
