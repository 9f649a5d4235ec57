"""Where an adapter came from, as nodes of a small graph, and the geometry of the SVGs drawn on the server.

Read from the manifest the registry stores: ``imported_from`` (a plain PEFT directory), ``remote``
(``adapterhub_registry.remote.provenance``: fetched from which remote, URL and version there), ``merge`` (the
recipe of ``adapterhub merge``: its inputs by ``name@version`` and sha256, the combination and weights),
``continual`` (the sequence and task), ``base`` and ``data`` (what it was trained on). Each input is a node on
the left; the adapter itself is the node on the right. A node links to a page of this UI where one exists: an
input adapter's version (only while this registry holds those exact bytes), the other adapters of the same
sequence or base. A remote has no page here: its node names the remote, its URL and the version there. Labels are plain text: the template
escapes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from adapterhub_registry import AdapterRecord, NotFoundError, Registry, RegistryError
from adapterhub_registry.remote import provenance

NODE_W, NODE_H, GAP, LEFT_X, RIGHT_X, PAD = 300, 44, 12, 10, 420, 10
CURVE_W, CURVE_H, CURVE_PAD = 560, 220, 40


@dataclass(frozen=True)
class Node:
    kind: str  # base, data, peft, remote, merge-input, continual
    label: str
    detail: str
    href: str | None = None  # a page of this UI; None: nothing here to link to
    x: int = 0
    y: int = 0


@dataclass(frozen=True)
class Lineage:
    nodes: tuple[Node, ...]
    target: Node
    recipe: str | None  # the merge recipe, in words
    width: int
    height: int


def adapter_href(name: str, version: int | None = None) -> str:
    return f"/ui/adapters/{quote(name, safe='')}" + (f"/{version}" if version is not None else "")


def lineage_of(record: AdapterRecord, registry: Registry) -> Lineage:
    manifest = record.manifest
    nodes: list[Node] = []
    base = manifest.get("base") if isinstance(manifest.get("base"), dict) else {}
    if record.base_fingerprint or base:
        fingerprint = record.base_fingerprint or str(base.get("fingerprint") or "")
        nodes.append(Node("base", f"base {base.get('source') or 'model'}", f"fingerprint {fingerprint[:16]}",
                          "/ui/adapters?" + urlencode({"base": fingerprint}) if fingerprint else None))  # fmt: skip
    data = manifest.get("data")
    if isinstance(data, dict) and data:
        nodes.append(
            Node("data", f"data {data.get('path') or ''}".strip(), f"sha256 {str(data.get('sha256') or '?')[:16]}")
        )
    if manifest.get("imported_from"):
        nodes.append(Node("peft", f"imported from {manifest['imported_from']}", "a plain PEFT directory"))
    origin = provenance(record)
    if origin is not None:
        nodes.append(Node("remote", f"remote {origin.get('name')}: {origin.get('ref')}",
                          f"{origin.get('url')}, version {origin.get('version')} there"))  # fmt: skip
    recipe = None
    merge = manifest.get("merge")
    if isinstance(merge, dict):
        inputs = merge.get("inputs") if isinstance(merge.get("inputs"), list) else []
        weights = merge.get("weights") if isinstance(merge.get("weights"), list) else []
        for i, item in enumerate(inputs):
            ref = str(item.get("ref")) if isinstance(item, dict) else str(item)
            sha = str(item.get("sha256") or "") if isinstance(item, dict) else ""
            weight = f"weight {weights[i]}" if i < len(weights) else ""
            href = _local_href(registry, ref, sha)
            detail = " · ".join(x for x in (weight, f"sha256 {sha[:12]}" if sha else "", "" if href else "not in this registry") if x)  # fmt: skip
            nodes.append(Node("merge-input", f"merged from {ref}", detail, href))
        recipe = f"{merge.get('combination')} of {len(inputs)} inputs, weights {weights}" + (
            f", density {merge['density']}" if merge.get("density") is not None else "")  # fmt: skip
    continual = manifest.get("continual")
    if isinstance(continual, dict) and continual.get("sequence"):
        sequence = str(continual["sequence"])
        nodes.append(Node("continual", f"sequence {sequence}, task {continual.get('task')}",
                          f"position {continual.get('position')}",
                          "/ui/adapters?" + urlencode({"tag": f"sequence-{sequence}"})))  # fmt: skip
    return _laid_out(nodes, record, recipe)


def _local_href(registry: Registry, ref: Any, sha256: str = "") -> str | None:
    """The page of ``ref`` in this registry (and, given its sha256, only if it is still those bytes)."""
    if not isinstance(ref, str):
        return None
    try:
        found = registry.resolve(ref)
    except (NotFoundError, RegistryError, ValueError):
        return None
    if sha256 and found.blob_sha256 != sha256:
        return None
    return adapter_href(found.name, found.version)


def _laid_out(nodes: list[Node], record: AdapterRecord, recipe: str | None) -> Lineage:
    rows = max(len(nodes), 1)
    height = PAD * 2 + rows * NODE_H + (rows - 1) * GAP
    placed = tuple(
        Node(n.kind, n.label, n.detail, n.href, LEFT_X, PAD + i * (NODE_H + GAP)) for i, n in enumerate(nodes)
    )
    target = Node("adapter", record.ref, record.method, None, RIGHT_X, (height - NODE_H) // 2)
    return Lineage(placed, target, recipe, RIGHT_X + NODE_W + PAD, height)


@dataclass(frozen=True)
class Curve:
    series: tuple[tuple[str, str], ...]  # (name, SVG polyline points)
    x_label: str
    y_min: float
    y_max: float
    x_max: float
    width: int = CURVE_W
    height: int = CURVE_H


def curve_of(history: list[dict[str, Any]]) -> Curve | None:
    """Every numeric series of the history (train_loss, accuracy, ...) against the step, one scale for all."""
    names = sorted({k for row in history for k, v in row.items() if k not in ("epoch", "step") and _number(v)})
    if not history or not names:
        return None
    values = [float(row[k]) for row in history for k in names if _number(row.get(k))]
    steps = [float(row["step"]) for row in history]
    y_min, y_max, x_max = min(values), max(values), max(max(steps), 1.0)
    span = (y_max - y_min) or 1.0
    inner_w, inner_h = CURVE_W - 2 * CURVE_PAD, CURVE_H - 2 * CURVE_PAD

    def point(step: float, value: float) -> str:
        x = CURVE_PAD + inner_w * step / x_max
        y = CURVE_PAD + inner_h * (1 - (value - y_min) / span)
        return f"{x:.1f},{y:.1f}"

    series = tuple(
        (name, " ".join(point(float(row["step"]), float(row[name])) for row in history if _number(row.get(name))))
        for name in names
    )
    return Curve(series, "step", y_min, y_max, x_max)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
