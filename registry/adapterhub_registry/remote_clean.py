"""Removing things from a remote, and checking it: delete a version, collect unused blobs, verify.

Nothing on a remote is rewritten, so deleting a version adds a tombstone (`deleted/<name>/<version>.json`,
created if absent) that listing, `resolve` and `fetch` respect; the version number is never reused. A
version a tag points at is refused until the tag is moved, so a tag never names a deleted version.

`gc` removes the blobs no live entry references, but only those last written more than a grace period ago
(default 24 h, never under `MIN_GRACE_S`): a push uploads its blob before it writes its entry, so a blob
without an entry may be a push in flight, and only its age tells a killed push from a running one. A push
that finds its blob already there re-writes it when it is older than `remote_layout.BLOB_REUSE_S`, so the
blob's age is never past the grace while a push is about to use it. `gc` also removes the index's snapshots
that HEAD no longer names and its log objects the snapshot covers, with the same grace.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from adapterhub_registry import remote_index as index_module
from adapterhub_registry import remote_layout as layout
from adapterhub_registry.blobs import sha256_hex
from adapterhub_registry.errors import RegistryError
from adapterhub_registry.names import parse_ref
from adapterhub_registry.remote_index import RemoteIndex, read_truth

DEFAULT_GRACE_S = 24 * 3600.0
MIN_GRACE_S = 3600.0
_BLOBS = "blobs/sha256/"


def delete_version(index: RemoteIndex, ref: str) -> layout.RemoteEntry:
    """Tombstone the version `ref` names (`name@version`); refused while a tag points at it."""
    store = index.store
    parsed = parse_ref(ref)
    if parsed.version is None:
        raise RegistryError(
            f"{ref!r} names no version; delete one version at a time (name@VERSION), as `adapterhub registry "
            f"list --remote REMOTE --name {parsed.name} --all-versions` shows them"
        )
    entry = layout.resolve(store, parsed)
    tags = layout.tags_by_version(store, entry.name).get((entry.name, entry.version), [])
    if tags:
        raise RegistryError(
            f"{entry.ref} is what tag(s) {', '.join(f'{entry.name}:{t}' for t in tags)} point at; move them first "
            f"(`adapterhub registry tag --remote REMOTE {entry.name}@VERSION {tags[0]}`), then delete it"
        )
    started = index.begin(entry.name)
    store.create(layout.deleted_key(entry.name, entry.version), b'{"deleted_at": %.3f}' % time.time())
    index.commit(started, entry.name, deleted=[entry.version])
    return entry


@dataclass
class GcReport:
    """What `gc` removed (keys), and what it kept because it is younger than the grace period."""

    removed: list[str] = field(default_factory=list)
    kept_young: list[str] = field(default_factory=list)
    live_blobs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"removed": self.removed, "kept_young": self.kept_young, "live_blobs": self.live_blobs}


def live_blobs(index: RemoteIndex) -> set[str]:
    """The sha256 of every blob a live (not deleted) entry references.

    The entries are listed here even though the index has their blobs: a blob `gc` removes is gone for good,
    so every entry listed is accounted for (from the index, or read when the index lacks it)."""
    store = index.store
    keys = layout.entry_keys(store)
    gone = layout.deleted_versions(store)
    known = index.state().rows
    missing = [k for k in keys if k not in known and k not in gone]
    extra = read_truth(store, index.cache).rows if missing else {}
    return {(known.get(k) or extra[k])[6] for k in keys if k not in gone and (k in known or k in extra)}


def collect(index: RemoteIndex, grace_s: float = DEFAULT_GRACE_S, *, dry_run: bool = False) -> GcReport:
    """Remove unreferenced blobs, unnamed snapshots and covered log objects older than `grace_s`."""
    if grace_s < MIN_GRACE_S:
        raise RegistryError(
            f"a grace period of {grace_s:.0f} s is too short: a push in flight could lose its blob; "
            f"use at least {MIN_GRACE_S / 3600:.0f}h"
        )
    store, now, report = index.store, time.time(), GcReport()
    live = live_blobs(index)
    report.live_blobs = len(live)
    candidates = {k: t for k, t in store.modified(_BLOBS).items() if k[len(_BLOBS) :] not in live}
    head = index.head()
    if head is not None:
        named = f"{index_module.SNAPSHOT_PREFIX}{head['snapshot']}.json.gz"
        candidates |= {k: t for k, t in store.modified(index_module.SNAPSHOT_PREFIX).items() if k != named}
        floor = index_module.window_start(head["covers"])
        candidates |= {k: t for k, t in store.modified(index_module.LOG_PREFIX).items() if k < floor}
    for key, written in sorted(candidates.items()):
        if now - written < grace_s:
            report.kept_young.append(key)
            continue
        if not dry_run:
            store.delete(key)
        report.removed.append(key)
    return report


@dataclass
class RemoteVerifyReport:
    """What `verify --remote` found: intact versions, damaged or missing blobs, and an index that disagrees
    with the entries (all failures), plus blobs no live entry uses (`gc` collects them; not a failure)."""

    checked: int = 0
    ok: list[str] = field(default_factory=list)
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    index_problems: list[str] = field(default_factory=list)
    unreferenced: list[str] = field(default_factory=list)

    @property
    def ok_all(self) -> bool:
        return not self.corrupt and not self.index_problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked, "ok": self.ok, "corrupt": [{"ref": r, "reason": w} for r, w in self.corrupt],
            "index_problems": self.index_problems, "unreferenced": self.unreferenced, "ok_all": self.ok_all,
        }  # fmt: skip


def verify(index: RemoteIndex, threads: int = 4) -> RemoteVerifyReport:
    """Download and re-hash every live version's blob, and compare the index with the entries."""
    store, report = index.store, RemoteVerifyReport()
    truth = read_truth(store, index.cache)
    live = {k: v for k, v in truth.rows.items() if k not in truth.deleted}
    if index.head() is not None:
        listed = index.state()
        indexed = {k for k in listed.rows if k not in listed.deleted}
        report.index_problems += [
            f"{n}@{v} is on the remote but not in its index" for n, v in sorted(live.keys() - indexed)
        ]
        report.index_problems += [
            f"the index lists {n}@{v}, which is not on the remote" for n, v in sorted(indexed - live.keys())
        ]
        report.index_problems += [
            f"the index has tag {n}:{t} -> @{listed.tags.get((n, t), ('none',))[0]}, the remote -> @{v}"
            for (n, t), (v, _) in sorted(truth.tags.items()) if listed.tags.get((n, t), (None,))[0] != v
        ]  # fmt: skip
        if report.index_problems:
            report.index_problems.append("rebuild the index: `adapterhub registry compact --remote REMOTE --rebuild`")

    def check(item: tuple[tuple[str, int], list[Any]]) -> tuple[str, str | None]:
        (name, version), values = item
        sha256, size = values[6], values[7]
        try:
            data = store.read(layout.blob_key(sha256))
        except FileNotFoundError:
            return f"{name}@{version}", f"blob {sha256[:12]} is missing"
        if len(data) != size:
            return f"{name}@{version}", f"blob {sha256[:12]} has {len(data)} bytes, expected {size}"
        if (digest := sha256_hex(data)) != sha256:
            return f"{name}@{version}", f"blob {sha256[:12]} hashes to {digest[:12]}: damaged"
        return f"{name}@{version}", None

    with ThreadPoolExecutor(threads) as pool:
        for ref, problem in pool.map(check, sorted(live.items())):
            report.checked += 1
            if problem is None:
                report.ok.append(ref)
            else:
                report.corrupt.append((ref, f"{problem}; push it again from a machine with a good copy "
                                            "(`adapterhub registry push-remote`): the damaged blob is replaced"))  # fmt: skip
    used = {v[6] for v in live.values()}
    report.unreferenced = [k for k in store.list(_BLOBS) if k[len(_BLOBS) :] not in used]
    return report
