"""Suite discovery: every module in this package not starting with ``_`` is a suite named after its file.

A suite module has a docstring (its first line is the description `--list` shows), a ``run(ctx)``
function, and optionally ``REQUIRES``: importable module name -> pip requirement, checked before it runs, and
``DEVICES``: the device types it can run on (default cpu and cuda).
Importing a suite module must be cheap; heavy imports belong inside ``run``. See benchmarks/README.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import click

from benchmarks.harness import Context


class BenchmarkError(click.ClickException):
    """A benchmark cannot run as asked: unknown suite, missing dependency, missing model. One line, exit 1."""


class SuiteUnavailable(BenchmarkError):
    """The suite cannot run on this machine (a package missing, a device it does not run on): an error when
    the suite is named, a one-line skip under `bench all`."""


@dataclass
class Suite:
    name: str
    description: str
    run: Callable[[Context], None]
    requires: dict[str, str]
    devices: tuple[str, ...] = ("cpu", "cuda")

    def missing(self) -> list[str]:
        """pip requirements of this suite's modules that are not installed."""
        return [pip for module, pip in self.requires.items() if importlib.util.find_spec(module) is None]

    def check_runnable(self, device: str) -> None:
        """Raise `SuiteUnavailable` saying why, when this suite cannot run here on ``device``."""
        missing = self.missing()
        if missing:
            raise SuiteUnavailable(
                f"suite {self.name!r} needs packages that are not installed: pip install {' '.join(missing)}"
            )
        kind = device.split(":")[0]
        if kind not in self.devices:
            raise SuiteUnavailable(f"suite {self.name!r} runs on {' or '.join(self.devices)} only, and this run is on {kind}; "
                                   f"run it with --device {self.devices[0]} on a machine that has one")  # fmt: skip


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
    return Suite(
        name,
        description,
        run,
        dict(getattr(module, "REQUIRES", {})),
        tuple(getattr(module, "DEVICES", ("cpu", "cuda"))),
    )


def require(module: str, pip: str, why: str) -> None:
    """Raise a clear error when an optional module a suite needs at run time is missing."""
    if importlib.util.find_spec(module) is None:
        raise BenchmarkError(f"{why} needs the Python module {module!r}, which is not installed: pip install {pip}")
