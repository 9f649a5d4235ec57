"""Aliases that keep a renamed plugin-facing name working, with a ``DeprecationWarning`` naming what replaces it.

Plugins are separate distributions released on their own schedule, so a rename in the core must not break them on
the day it lands (docs/plugins.md, "Deprecation policy"). The core keeps the old name as an alias made here:
``renamed_attribute`` for an attribute of a class (``Base.task``), ``moved_names`` for a module-level name that
moved to another module (``adapterhub.adapters.peft_task_type``). Every alias states the plugin API version it goes
away in, at least one full minor version after the one that renamed it; ``ALIASES`` lists them all so a test can
refuse a release that still carries an alias past its removal version.

Import-light (no torch): ``adapterhub.base`` and the plugin API modules use it.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


def _minor_version(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise ValueError(f"plugin API version {version!r} is not of the form major.minor (e.g. '1.3')")
    return int(major), int(minor)


@dataclass(frozen=True)
class Alias:
    """One deprecated name: ``old`` still works until plugin API ``removed_in``; ``new`` is what to use instead."""

    old: str
    new: str
    since: str
    removed_in: str

    def __post_init__(self) -> None:
        major, minor = _minor_version(self.since)
        # the alias lives through the whole next minor version too, so a plugin released before the rename keeps
        # working while its author adapts: renamed in 1.1, still there in 1.2, gone in 1.3 at the earliest
        earliest = (major, minor + 2)
        if _minor_version(self.removed_in) < earliest:
            raise ValueError(
                f"alias {self.old} -> {self.new}: renamed in plugin API {self.since}, it cannot go away in "
                f"{self.removed_in}; pass removed_in={earliest[0]}.{earliest[1]} or later"
            )

    @property
    def message(self) -> str:
        return (
            f"{self.old} is deprecated since adapterhub plugin API {self.since} and goes away in {self.removed_in}: "
            f"use {self.new} instead"
        )

    def warn(self, stacklevel: int) -> None:
        warnings.warn(self.message, DeprecationWarning, stacklevel=stacklevel + 1)


ALIASES: list[Alias] = []
"""Every alias the core defines, in the order they were made (``adapterhub plugins`` and the tests read it)."""


def _register(alias: Alias) -> Alias:
    ALIASES.append(alias)
    return alias


class renamed_attribute(Generic[T]):  # noqa: N801 - used like ``property``
    """A class attribute that forwards to the attribute it was renamed to, warning on every read and write.

    ``task = renamed_attribute[str]("model_task", since="1.1", removed_in="1.3")`` in a class body (a dataclass
    too: an unannotated class attribute is no field, so the constructor and ``asdict`` do not see it).
    """

    def __init__(self, new: str, *, since: str, removed_in: str) -> None:
        self.new, self.since, self.removed_in = new, since, removed_in
        self.alias: Alias | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self.alias = _register(Alias(f"{owner.__name__}.{name}", f"{owner.__name__}.{self.new}", self.since,
                                     self.removed_in))  # fmt: skip

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> renamed_attribute[T]: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...
    def __get__(self, instance: object | None, owner: type | None = None) -> T | renamed_attribute[T]:
        if instance is None:
            return self
        self._alias().warn(stacklevel=2)
        value: T = getattr(instance, self.new)
        return value

    def __set__(self, instance: object, value: T) -> None:
        self._alias().warn(stacklevel=2)
        setattr(instance, self.new, value)

    def _alias(self) -> Alias:
        if self.alias is None:
            raise TypeError(f"renamed_attribute({self.new!r}) must be assigned in a class body, as a property is")
        return self.alias


def moved_names(module: str, moves: dict[str, str], *, since: str, removed_in: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving names that moved elsewhere: ``moves`` maps each old name in ``module`` to
    the dotted path of its new home (``"adapterhub.model_tasks.peft_task_type"``), imported on first use so the
    alias costs nothing until an old plugin reads it.

    ``__getattr__ = moved_names(__name__, {...}, since="1.1", removed_in="1.3")`` at the module's top level.
    """
    aliases = {old: _register(Alias(f"{module}.{old}", new, since, removed_in)) for old, new in moves.items()}

    def __getattr__(name: str) -> Any:
        alias = aliases.get(name)
        if alias is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        alias.warn(stacklevel=2)
        home, _, attribute = alias.new.rpartition(".")
        return getattr(importlib.import_module(home), attribute)

    return __getattr__
