"""Output helpers shared by every ``adapterhub`` command group."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import click


def echo_json(value) -> None:
    """``--json`` output: indented, keys sorted, anything else (paths, dates) as its string."""
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def record_lines(record: dict) -> list[str]:
    """An adapter version as ``adapterhub registry show`` prints it without ``--json``: what a person looks at
    first, one field a line (``record`` is ``AdapterRecord.to_dict()``; ``--json`` prints all of it)."""
    manifest = record.get("manifest") or {}
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(record["metrics"].items()) if isinstance(v, (int, float)))
    created = datetime.fromtimestamp(record["created_at"], timezone.utc).isoformat(timespec="seconds")
    rows = [
        ("method", record["method"]),
        ("base", record["base_fingerprint"] or "not recorded"),
        ("tags", ", ".join(record["tags"]) or "-"),
        ("labels", ", ".join(manifest.get("labels") or []) or "-"),
        ("metrics", metrics or "-"),
        ("size", f"{record['size_bytes'] / 1024:.1f} KiB"),
        ("sha256", record["blob_sha256"]),
        ("created", created),
        ("description", manifest.get("description") or "-"),
        ("lineage", ", ".join(k for k in ("merge", "continual", "remote") if manifest.get(k)) or "-"),
    ]
    return [record["ref"], *(f"  {label:<14} {value}" for label, value in rows)]
