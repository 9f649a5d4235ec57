"""Suite discovery: every module in this package not starting with ``_`` is a suite named after its file.

A suite module has a docstring (its first line is the description `--list` shows), a ``run(ctx)``
function, and optionally ``REQUIRES``: importable module name -> pip requirement, checked before it runs.
Importing a suite module must be cheap; heavy imports belong inside ``run``. See benchmarks/README.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass
from typing import Callable

import click

from benchmarks.harness import Context


class BenchmarkError(click.ClickException):
    """A benchmark cannot run as asked: unknown suite, missing dependency, missing model. One line, exit 1."""


@dataclass
class Suite:
    name: str
    description: str
    run: Callable[[Context], None]
    requires: dict[str, str]

    def missing(self) -> list[str]:
        """pip requirements of this suite's modules that are not installed."""
        return [pip for module, pip in self.requires.items() if importlib.util.find_spec(module) is None]


def names() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))


def load(name: str) -> Suite:
    """The suite called ``name``; an unknown name is an error listing the known ones."""
    known = names()
    if name not in known:
        raise BenchmarkError(f"unknown benchmark suite {name!r}; known suites: {', '.join(known)} (or 'all')")
    module = importlib.import_module(f"{__name__}.{name}")
    run = getattr(module, "run", None)
    if not callable(run):
        raise BenchmarkError(f"benchmarks/suites/{name}.py has no run(ctx) function")
    description = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
    return Suite(name, description, run, dict(getattr(module, "REQUIRES", {})))


def require(module: str, pip: str, why: str) -> None:
    """Raise a clear error when an optional module a suite needs at run time is missing."""
    if importlib.util.find_spec(module) is None:
        raise BenchmarkError(f"{why} needs the Python module {module!r}, which is not installed: pip install {pip}")
