"""Output helpers shared by every ``adapterhub`` command group."""

from __future__ import annotations

import json

import click


def echo_json(value) -> None:
    """``--json`` output: indented, keys sorted, anything else (paths, dates) as its string."""
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))
