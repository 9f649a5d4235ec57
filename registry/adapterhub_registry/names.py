"""Validation of adapter names and tags, and parsing of refs (`name`, `name@3`, `name:tag`).

Names and tags end up in SQL rows, in CLI output and in directory names chosen by callers, so they are
restricted to one portable character set; that also rules out path tricks (`/`, `\\`, `..`, NUL,
absolute paths) before anything touches the disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapterhub_registry.errors import InvalidNameError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION = re.compile(r"[1-9][0-9]*")
_RULES = (
    "use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit, "
    "without '..' (no '/', '\\\\', ':', '@', spaces or NUL)"
)


def validate_name(value: str, kind: str = "name") -> str:
    """Return `value` unchanged if it is a valid adapter name (or tag, per `kind`); raise otherwise."""
    if not isinstance(value, str):
        raise InvalidNameError(f"adapter {kind} must be a string, got {type(value).__name__}")
    if not _NAME.fullmatch(value) or ".." in value:
        raise InvalidNameError(f"invalid adapter {kind} {value!r}: {_RULES}")
    return value


def validate_tag(value: str) -> str:
    """Return `value` unchanged if it is a valid tag; tags follow the same rules as names."""
    return validate_name(value, kind="tag")


@dataclass(frozen=True)
class Ref:
    """A parsed reference to one version (or the latest version) of a named adapter."""

    name: str
    version: int | None = None
    tag: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.tag is not None:
            return f"{self.name}:{self.tag}"
        return self.name


def parse_ref(ref: str) -> Ref:
    """Parse `name`, `name@<version>` (positive integer) or `name:<tag>`."""
    if not isinstance(ref, str):
        raise InvalidNameError(f"adapter ref must be a string, got {type(ref).__name__}")
    if "@" in ref:
        name, _, version = ref.partition("@")
        if not _VERSION.fullmatch(version):
            raise InvalidNameError(
                f"invalid version in ref {ref!r}: write name@N with N a positive integer, e.g. {name or 'my-adapter'}@1"
            )
        return Ref(validate_name(name), version=int(version))
    if ":" in ref:
        name, _, tag = ref.partition(":")
        return Ref(validate_name(name), tag=validate_tag(tag))
    return Ref(validate_name(ref))
