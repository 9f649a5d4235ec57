"""What one adapter's page shows, read from its registry record: the manifest in sections, the files, the
training curve, two versions side by side. Plain data for the templates (which escape every value); torch-free.

The manifest is read as the plain dict the registry stores (``adapterhub/manifest.py`` describes its keys), so a
manifest of any age, or one with keys this version does not know, still shows: unknown keys land in "other".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from adapterhub_registry import AdapterRecord

SECTIONS = (  # (title, manifest keys shown in it); a key of no section goes to "Other"
    ("Base", ("base",)),
    ("Method and options", ("method", "plugin", "options", "task", "labels")),
    ("Data", ("data",)),
    ("Data summary", ("data_summary",)),
    ("Training settings", ("training",)),
    ("Description", ("description",)),
)
LINEAGE_KEYS = ("merge", "continual", "remote", "imported_from", "format", "metrics")  # shown elsewhere


@dataclass(frozen=True)
class FileRow:
    name: str
    size_bytes: int
    sha256: str


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as ``(dotted.key, JSON text of the leaf)`` rows; lists stay whole (one row)."""
    if isinstance(value, dict) and value:
        rows: list[tuple[str, str]] = []
        for key in sorted(value, key=str):
            rows.extend(flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return rows
    return [(prefix, value if isinstance(value, str) else json.dumps(value, sort_keys=True))]


def manifest_sections(manifest: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The manifest as titled sections of rows; a training ``history`` is left to the curve."""
    sections, shown = [], set(LINEAGE_KEYS)
    for title, keys in SECTIONS:
        rows: list[tuple[str, str]] = []
        for key in keys:
            if key not in manifest:
                continue
            shown.add(key)
            value = manifest[key]
            if key == "training" and isinstance(value, dict):
                value = {k: v for k, v in value.items() if k != "history"}
            rows.extend(flatten(value, key))
        if rows:
            sections.append((title, rows))
    other = [row for key in sorted(manifest) if key not in shown for row in flatten(manifest[key], key)]
    if other:
        sections.append(("Other", other))
    return sections


def files_of(record: AdapterRecord, config_text: str) -> list[FileRow]:
    """The files a pull writes, with sha256 and size (the weights' sha256 is the blob's name in the registry)."""
    config = config_text.encode("utf-8")
    return [
        FileRow("adapter_config.json", len(config), hashlib.sha256(config).hexdigest()),
        FileRow("adapter_model.safetensors", record.size_bytes, record.blob_sha256),
    ]


def history_of(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-evaluation records the run kept (``training.history``: epoch, step, train_loss, metrics), if any."""
    training = manifest.get("training")
    history = training.get("history") if isinstance(training, dict) else None
    if not isinstance(history, list):
        return []
    return [row for row in history if isinstance(row, dict) and isinstance(row.get("step"), (int, float))]


def settings_of(record: AdapterRecord) -> dict[str, Any]:
    """What decides a version, to compare two: method, base, PEFT config and manifest (lineage included)."""
    manifest = {k: v for k, v in record.manifest.items() if k not in ("description",)}
    if isinstance(manifest.get("training"), dict):
        manifest["training"] = {k: v for k, v in manifest["training"].items() if k != "history"}
    return {"method": record.method, "base_fingerprint": record.base_fingerprint, "peft_config": record.peft_config,
            "manifest": manifest, "weights_sha256": record.blob_sha256}  # fmt: skip


def compared(a: AdapterRecord, b: AdapterRecord) -> tuple[list[tuple[str, str, str, bool]], list[tuple[str, str, str, bool]]]:  # fmt: skip
    """(settings rows, metrics rows), each ``(key, value in a, value in b, differs)``; a missing value is "—"."""

    def rows(left: dict[str, Any], right: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
        flat_a, flat_b = dict(flatten(left)), dict(flatten(right))
        keys = sorted(set(flat_a) | set(flat_b))
        return [(k, flat_a.get(k, "—"), flat_b.get(k, "—"), flat_a.get(k) != flat_b.get(k)) for k in keys if k]

    return rows(settings_of(a), settings_of(b)), rows(a.metrics, b.metrics)


def metric_cells(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """Metrics as (name, shown value): numbers to 4 significant digits."""
    return [
        (name, f"{value:.4g}" if isinstance(value, float) else str(value)) for name, value in sorted(metrics.items())
    ]
