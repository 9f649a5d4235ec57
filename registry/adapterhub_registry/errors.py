"""Exceptions raised by the registry.

One small hierarchy so callers (the adapterhub CLI, scripts) can catch `RegistryError` and print its
message: every message says what was wrong and what to do about it. Subclasses also derive from the
matching builtin where one fits, so generic `except ValueError` / `except LookupError` code still works.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of everything the registry raises on purpose."""


class InvalidNameError(RegistryError, ValueError):
    """A name, tag or ref does not follow the naming rules."""


class NotFoundError(RegistryError, LookupError):
    """A ref, name or tag does not exist in the index."""


class CorruptBlobError(RegistryError):
    """A stored blob is missing, truncated, or its bytes no longer match its sha256."""


class UnsafeFileError(RegistryError):
    """An input file is a pickle, or a safetensors file that fails validation."""


class DestinationExistsError(RegistryError, FileExistsError):
    """A write would replace files that are already there; ``paths`` lists them."""

    def __init__(self, message: str, paths: list[str]):
        super().__init__(message)
        self.paths = paths
