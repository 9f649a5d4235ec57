"""The manifest: what adapterhub records beside an adapter's PEFT files, as ``adapterhub.json``.

``adapters.build_manifest`` makes one when an adapter is trained, ``adapters.save_adapter`` writes it, the
registry merges it into the adapter's index entry (``AdapterRecord.manifest``, a plain dict: the registry
does not depend on the core), and eval, the continual router and evaluation read it back through
``Manifest.from_dict``. Stored manifests stay readable forever: ``from_dict`` takes any earlier manifest (a
missing key is ``None``) and keeps keys it does not know in ``extra``; ``to_dict`` writes the JSON keys
adapterhub has always written (a field that is ``None`` is left out: absent and null meant the same to
every reader), so ``Manifest.from_dict(d).to_dict() == d`` for a manifest without nulls.

The base's fingerprint is recorded once, in ``base.fingerprint``; the registry takes its record's
``base_fingerprint`` from there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

FORMAT = 1


class _Section:
    """What the manifest's nested records share: read from any earlier manifest (unknown keys kept in ``extra``),
    written with every key, null or not, as ``Base.describe()`` and the plugin record always were."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        return _from_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self, keep_none=True)


@dataclass(frozen=True)
class BaseIdentity(_Section):
    """The base model an adapter was trained on (``Base.describe()``); ``fingerprint`` decides compatibility."""

    fingerprint: str | None = None
    model_type: str | None = None
    shape: dict[str, Any] | None = None
    source: str | None = None  # the model directory's or .gguf file's name, for messages
    quantization: str | None = None
    given: str | None = None  # the packaged name (``minilm``) or absolute path it was loaded from (newer manifests)
    architecture: str | None = None  # the config's first architecture, e.g. ``BertModel`` (newer manifests)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Every key as always, and the keys added later only when set, so an older record reads back unchanged."""
        return {k: v for k, v in super().to_dict().items() if v is not None or k not in ("given", "architecture")}

    def described(self) -> str:
        """The base in words for messages: where to load it from, its architecture and fingerprint."""
        facts = ", ".join(f for f in (self.architecture, f"fingerprint {self.fingerprint}") if f)
        return f"{self.given or self.source or 'an unrecorded base'} ({facts})"


@dataclass(frozen=True)
class PluginIdentity(_Section):
    """The plugin distribution that provided the adapter's method: named when a machine without it loads it."""

    name: str | None = None
    distribution: str | None = None
    version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ContinualEntry(_Section):
    """An adapter's place in a task sequence (``continual.sequence``): the router is rebuilt from these."""

    sequence: str
    task: str  # the continual-learning task, not the model task
    position: int
    digest: str | None = None  # what decided the adapter (data, settings, base...): unchanged means up to date
    router: dict[str, Any] = field(default_factory=dict)  # features, max_length, examples, encoded prototypes
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """One adapter's ``adapterhub.json``; every field but ``format`` is optional (imported PEFT adapters
    carry little, trained ones everything)."""

    format: int = FORMAT
    method: str | None = None
    plugin: PluginIdentity | None = None
    options: dict[str, Any] | None = None  # the method's options dataclass, as a dict
    model_task: str | None = None  # "seq-cls" or "causal-lm"; JSON key "task"
    labels: list[str] | None = None  # a classifier's label names, in head order
    base: BaseIdentity | None = None
    data: dict[str, Any] | None = None  # the DataSpec as recorded: file name, sha256, columns, split
    data_summary: dict[str, Any] | None = None  # examples per split, majority baseline, label counts, ...
    training: dict[str, Any] | None = None  # the TrainSettings and what the run did (steps, seconds, ...)
    metrics: dict[str, Any] | None = None  # in a directory pulled from the registry
    continual: ContinualEntry | None = None
    imported_from: str | None = None  # "peft" for an adapter imported from a plain PEFT directory
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as they were

    @property
    def base_fingerprint(self) -> str | None:
        return self.base.fingerprint if self.base is not None else None

    @property
    def data_sha256(self) -> str | None:
        """The sha256 of the data file the adapter was trained on (its held-out split comes from that file)."""
        return (self.data or {}).get("sha256")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Manifest:
        """A manifest from its stored JSON object, of this or any earlier version."""
        values = dict(values)
        if "task" in values:
            values["model_task"] = values.pop("task")
        for key, kind in (("base", BaseIdentity), ("plugin", PluginIdentity), ("continual", ContinualEntry)):
            if isinstance(values.get(key), dict):
                values[key] = kind.from_dict(values[key])
        return _from_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored as ``adapterhub.json`` and in the registry's index."""
        values = _to_dict(self, keep_none=False)
        if "model_task" in values:
            values["task"] = values.pop("model_task")
        return values


def _from_dict(cls: type, values: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    return cls(
        **{k: v for k, v in values.items() if k in known}, extra={k: v for k, v in values.items() if k not in known}
    )


def _to_dict(value: Any, *, keep_none: bool) -> dict[str, Any]:
    """The fields in declaration order (nested entries as dicts), then the ``extra`` keys."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if f.name == "extra" or (item is None and not keep_none):
            continue
        out[f.name] = item.to_dict() if hasattr(item, "to_dict") else item
    return {**out, **value.extra}
