"""The values the registry hands back: one stored adapter version, and the result of `verify`.

`list()` over a large index builds thousands of records, and decoding three JSON columns per row would
dominate its time. The index therefore hands over the JSON text (a `str`), and the dict fields decode it
the first time they are read. To callers they are plain dict fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class _JSONDictField:
    """Dataclass field descriptor: stores a dict or its JSON text, always returns the dict."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, record: object, owner: type | None = None) -> dict[str, Any]:
        if record is None:
            raise AttributeError(self._name)  # no class-level default: the field stays required
        value = record.__dict__[self._name]
        if isinstance(value, str):
            value = record.__dict__[self._name] = json.loads(value)
        return value

    def __set__(self, record: object, value: dict[str, Any] | str) -> None:
        record.__dict__[self._name] = value


@dataclass(frozen=True)
class AdapterRecord:
    """One version of a named adapter as recorded in the index."""

    name: str
    version: int
    method: str
    base_fingerprint: str | None
    peft_config: dict[str, Any] = _JSONDictField()  # type: ignore[assignment]
    manifest: dict[str, Any] = _JSONDictField()  # type: ignore[assignment]
    metrics: dict[str, Any] = _JSONDictField()  # type: ignore[assignment]
    tags: tuple[str, ...]  # type: ignore[misc]  # the JSON fields above have no default (see _JSONDictField)
    blob_sha256: str  # type: ignore[misc]  # the JSON fields above have no default (see _JSONDictField)
    size_bytes: int  # type: ignore[misc]  # the JSON fields above have no default (see _JSONDictField)
    created_at: float  # type: ignore[misc]  # the JSON fields above have no default (see _JSONDictField)

    @classmethod
    def from_index_row(cls, values: tuple[Any, ...]) -> AdapterRecord:
        """A record from one index row, its values in field order.

        Skips the frozen dataclass ``__init__``, which sets each of the 11 fields through
        ``object.__setattr__``: that alone was 40 % of ``list()`` over 10,000 adapters. The values come from
        our own index, already of the right types, and the JSON fields stay text as the descriptor expects.
        """
        record = object.__new__(cls)
        record.__dict__.update(zip(_FIELD_NAMES, values))
        return record

    @property
    def ref(self) -> str:
        """The exact ref of this version, `name@version`."""
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (for `--json` output), including `ref`."""
        return {
            "ref": self.ref,
            "name": self.name,
            "version": self.version,
            "method": self.method,
            "base_fingerprint": self.base_fingerprint,
            "peft_config": self.peft_config,
            "manifest": self.manifest,
            "metrics": self.metrics,
            "tags": list(self.tags),
            "blob_sha256": self.blob_sha256,
            "size_bytes": self.size_bytes,
            "created_at": self.created_at,
        }


_FIELD_NAMES = tuple(f.name for f in fields(AdapterRecord))


@dataclass
class VerifyReport:
    """What `Registry.verify` found: intact refs, damaged refs, and files nothing refers to."""

    checked: int
    ok: list[str] = field(default_factory=list)
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (ref, reason)
    orphans: list[Path] = field(default_factory=list)
    temp_files: list[Path] = field(default_factory=list)
    repaired: bool = False  # True when orphans and temp files listed above were removed

    @property
    def ok_all(self) -> bool:
        """No damaged adapter, and no leftover files (or they were just removed)."""
        leftovers = bool(self.orphans or self.temp_files)
        return not self.corrupt and (self.repaired or not leftovers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "ok": list(self.ok),
            "corrupt": [{"ref": ref, "reason": reason} for ref, reason in self.corrupt],
            "orphans": [str(p) for p in self.orphans],
            "temp_files": [str(p) for p in self.temp_files],
            "repaired": self.repaired,
            "ok_all": self.ok_all,
        }
