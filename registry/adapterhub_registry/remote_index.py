"""The remote's index: what `list`, `search` and `gc` read instead of one object per version.

```
<remote>/catalog/HEAD.json                       {"snapshot": id, "covers": log key}, moved by compare-and-swap
<remote>/catalog/snapshots/<id>.json.gz          every live version's listing fields, tags, tombstones; immutable
<remote>/catalog/log/<time_ns>-<random>.json     one small object per write (push, tag, delete) since then
```

The design is the one of lakeFS and the table formats (Iceberg, Delta): immutable snapshots, a pointer moved
by compare-and-swap, and the writes since the snapshot kept in a log that readers fold in. A reading machine
makes three requests whatever the remote's size: GET the pointer, GET the snapshot (cached locally by its id,
which is its sha256, so it is downloaded once) and one LIST of the log from the snapshot's position on (S3's
StartAfter). The version entries (remote_layout.py) stay the source of truth, and the index only ever says
what they say:

* A write first PUTs its log object as *pending* (`{"name": ..., "state": "pending"}`), then writes the
  entries, tags or tombstones, then overwrites its log object with what it wrote (*done*). A reader applies
  done objects as they are and, for a pending one (a write in flight, or killed), re-reads that one name
  from the entries (LIST `index/<name>/`, `tags/<name>/`, `deleted/<name>/`). So a push killed after its
  entry is still listed, and a log object whose entry was never written lists nothing.
* Compaction (on a push now and then, `COMPACT_EVERY`, or `adapterhub registry compact --remote`) reads the
  index as a reader does, writes the result as a new snapshot and moves the pointer only if nobody moved it
  since (compare-and-swap); the loser's snapshot is dropped (and collected by `gc`). A reader sees the old
  pointer or the new one, and either names a whole snapshot written before it was named.
* The log's keys start with the writer's clock, so a write can land a little after a later-stamped one. A
  snapshot records the keys it folded in the last `MARGIN_S` before its position, and readers list from
  `MARGIN_S` before it, applying what the snapshot did not: a late or skewed writer is still seen. Compaction
  does not move past a pending object younger than `STALE_S` (its write may still finish), and a writer that
  took longer than half of that commits under a fresh key, so nothing finishes behind the position.
* Tag moves carry the tag's `seq` (its count of moves), so two moves logged out of order resolve to the
  newer; entries and tombstones are only ever added, so applying them twice changes nothing.

Why not list the entries (as before): one GET per name, 30 s for 1,000 names. Why not one index object
rewritten by every push: concurrent pushers would retry the compare-and-swap of a large object against each
other; here a push adds one small object and only compaction rewrites the snapshot.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from adapterhub_registry import remote_layout as layout
from adapterhub_registry.errors import RegistryError
from adapterhub_registry.names import validate_name
from adapterhub_registry.paging import MetricFilter
from adapterhub_registry.records import AdapterRecord
from adapterhub_registry.remote_cache import EntryCache
from adapterhub_registry.remote_store import RemoteStore

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
HEAD_KEY = "catalog/HEAD.json"
SNAPSHOT_PREFIX = "catalog/snapshots/"
LOG_PREFIX = "catalog/log/"
MARGIN_S = 120.0  # clock skew between writers plus the time from stamping a log key to its PUT landing
STALE_S = 600.0  # a pending log object older than this belongs to a dead writer (its three writes take ms)
COMPACT_EVERY = 32  # a push compacts with probability 1/COMPACT_EVERY, so the log a reader folds stays short
FIRST_BUILD_MAX = 100  # a push builds the first index itself only on a remote with at most this many entries
COLUMNS = ("name", "version", "method", "base_fingerprint", "metrics", "created_at", "blob_sha256", "size_bytes",
           "description")  # fmt: skip
Key = tuple[str, int]


def row(entry: layout.RemoteEntry) -> list[Any]:
    """An entry's listing fields, in `COLUMNS` order (what the snapshot keeps of it)."""
    description = entry.manifest.get("description")
    return [entry.name, entry.version, entry.method, entry.base_fingerprint, entry.metrics, entry.created_at,
            entry.blob_sha256, entry.size_bytes, description if isinstance(description, str) else None]  # fmt: skip


@dataclass
class IndexState:
    """Every live version's listing row, every tag (name, tag) -> (version, seq) and every tombstone."""

    rows: dict[Key, list[Any]] = field(default_factory=dict)
    tags: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    deleted: set[Key] = field(default_factory=set)
    _records: list[AdapterRecord] | None = None  # every live version as a record, built once per state
    _newest: list[AdapterRecord] | None = None  # each name's newest live version, likewise
    _texts: list[str] | None = None  # what `search` matches in each of `_newest`, lower case, likewise

    def copy(self) -> IndexState:
        return IndexState(dict(self.rows), dict(self.tags), set(self.deleted))

    def apply(self, body: dict[str, Any]) -> None:
        """Fold in one done log object (idempotent; a tag keeps its highest `seq`)."""
        name = body["name"]
        for values in body.get("rows", []):
            self.rows[(name, int(values[1]))] = values
        for tag, version, seq in body.get("tags", []):
            if seq >= self.tags.get((name, tag), (0, -1))[1]:
                self.tags[(name, tag)] = (int(version), int(seq))
        self.deleted.update((name, int(v)) for v in body.get("deleted", []))

    def replace_name(self, name: str, fresh: IndexState) -> None:
        """Take everything about `name` from `fresh` (read from the entries themselves)."""
        self.rows = {k: v for k, v in self.rows.items() if k[0] != name} | fresh.rows
        self.tags = {k: v for k, v in self.tags.items() if k[0] != name} | fresh.tags
        self.deleted = {k for k in self.deleted if k[0] != name} | fresh.deleted

    def records(self) -> list[AdapterRecord]:
        """Every live version, sorted by name and version, with its tags (built once, then shared)."""
        if self._records is None:
            tags: dict[Key, list[str]] = {}
            for (name, tag), (version, _) in sorted(self.tags.items()):
                tags.setdefault((name, version), []).append(tag)
            keys = [k for k in self.rows if k not in self.deleted]
            if any(a > b for a, b in zip(keys, keys[1:])):  # a snapshot's rows come sorted; the log's are appended
                keys.sort()
            build, no_tags = AdapterRecord.from_index_row, ()
            self._records = []
            for key in keys:
                name, version, method, base, metrics, created, sha256, size, text = self.rows[key]
                manifest = {"description": text} if text is not None else {}
                self._records.append(
                    build((name, version, method, base, {}, manifest, metrics, tuple(tags.get(key, no_tags)), sha256,
                           size, created))
                )  # fmt: skip
        return self._records

    def newest(self) -> list[AdapterRecord]:
        """Each name's newest live version, sorted by name (built once, then shared)."""
        if self._newest is None:
            self._newest = list({r.name: r for r in self.records()}.values())
        return self._newest

    def search(self, query: str) -> list[AdapterRecord]:
        """Each name's newest live version whose name, method, a tag or description contain `query` (lower case),
        as `matches` says; the fields are joined once per state, so a search is one substring test per name."""
        if "\n" in query:  # the separator below: test field by field
            return [r for r in self.newest() if matches(r, query)]
        if self._texts is None:
            self._texts = [
                "\n".join((r.name, r.method, *r.tags, str(r.manifest.get("description") or ""))).lower()
                for r in self.newest()
            ]
        return [r for r, text in zip(self.newest(), self._texts) if query in text]

    def encode(self, covers: str, folded: list[str]) -> bytes:
        body = {
            "format": INDEX_FORMAT, "covers": covers, "folded": sorted(folded), "columns": COLUMNS,
            "rows": [v for k, v in sorted(self.rows.items()) if k not in self.deleted],
            "tags": [[n, t, v, s] for (n, t), (v, s) in sorted(self.tags.items())],
            "deleted": sorted(self.deleted),
        }  # fmt: skip
        return gzip.compress(json.dumps(body, separators=(",", ":")).encode("utf-8"), compresslevel=3, mtime=0)

    @classmethod
    def decode(cls, data: bytes, key: str) -> tuple[IndexState, set[str]]:
        """The state a snapshot holds, and the log keys it folded (see the module docstring)."""
        try:
            body = json.loads(gzip.decompress(data))
            if body.get("format") != INDEX_FORMAT or tuple(body["columns"]) != COLUMNS:
                raise RegistryError(
                    f"remote index {key} has format {body.get('format')!r}; upgrade adapterhub-registry"
                )
            state = cls({(r[0], r[1]): r for r in body["rows"]}, {(n, t): (v, s) for n, t, v, s in body["tags"]},
                        {(n, v) for n, v in body["deleted"]})  # fmt: skip
            return state, set(body["folded"])
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise RegistryError(
                f"remote index snapshot {key} is damaged ({exc}); rebuild it from the entries with "
                "`adapterhub registry compact --remote REMOTE --rebuild`"
            ) from exc


def read_truth(store: RemoteStore, cache: EntryCache | None, name: str | None = None) -> IndexState:
    """The state read from the entries, tags and tombstones themselves (of one name, or all: one GET per
    entry not in `cache`)."""
    keys = [layout.entry_key(n, v) for n, v in layout.entry_keys(store, name)]
    found = cache.get_many(keys) if cache is not None else {}
    fetched = store.read_many([k for k in keys if k not in found])
    if cache is not None:
        cache.put_many(fetched)
    entries = [layout.RemoteEntry.from_json(data, key) for key, data in {**found, **fetched}.items()]
    return IndexState({(e.name, e.version): row(e) for e in entries}, layout.read_tags(store, name),
                      layout.deleted_versions(store, name))  # fmt: skip


def _log_time(key: str) -> float:
    """The writer's clock in a log key (`catalog/log/<time_ns>-<random>.json`); 0 for the empty position."""
    stamp = key[len(LOG_PREFIX) :].partition("-")[0]
    return int(stamp) / 1e9 if stamp.isdigit() else 0.0


def _log_key(at: float) -> str:
    return f"{LOG_PREFIX}{int(at * 1e9):020d}-{uuid.uuid4().hex[:12]}.json"


def window_start(covers: str) -> str:
    """The key a reader lists the log after: `MARGIN_S` before the snapshot's position."""
    return f"{LOG_PREFIX}{int(max(0.0, _log_time(covers) - MARGIN_S) * 1e9):020d}" if covers else LOG_PREFIX


@dataclass
class _Fold:
    """A state with the log folded in, and what compaction needs to know about that log."""

    state: IndexState
    head_token: str | None
    covers: str
    folded: set[str]
    window: list[tuple[str, bool]]  # (log key, still pending) in key order


class RemoteIndex:
    """The index of one remote: read it (`state`), write to its log (`begin`/`commit`), compact it."""

    def __init__(self, store: RemoteStore, cache: EntryCache) -> None:
        self.store, self.cache = store, cache
        self._snapshot: tuple[str, IndexState, set[str]] | None = None  # the last snapshot parsed, by id
        self._memo: tuple[str, tuple[str, ...], IndexState] | None = None  # (HEAD token, log keys, state)

    def state(self) -> IndexState:
        """The remote's index as of now; a remote without one is read from its entries (and says so)."""
        fold = self._fold()
        if fold is None:
            state = read_truth(self.store, self.cache)
            if state.rows:
                log.warning(
                    "remote %s has no index yet, so listing read every entry; build it once with "
                    "`adapterhub registry compact --remote REMOTE`", self.store.url,
                )  # fmt: skip
            return state
        return fold.state

    def begin(self, name: str) -> tuple[str, float]:
        """Log that a write of `name` starts (pending); returns its log key and start time for `commit`."""
        started = time.time()
        key = _log_key(started)
        self.store.put(key, json.dumps({"format": INDEX_FORMAT, "name": name, "state": "pending"}).encode())
        return key, started

    def commit(
        self,
        started: tuple[str, float],
        name: str,
        *,
        rows: Sequence[list[Any]] = (),
        tags: Sequence[tuple[str, int, int]] = (),
        deleted: Sequence[int] = (),
    ) -> None:
        """Replace the pending log object with what the write did; a write slower than `STALE_S / 2` commits
        under a fresh key, since compaction may have moved past its first one."""
        key, at = started
        if time.time() - at > STALE_S / 2:
            self.store.delete(key)
            key = _log_key(time.time())
        body = {"format": INDEX_FORMAT, "name": name, "state": "done", "rows": list(rows),
                "tags": [list(t) for t in tags], "deleted": list(deleted)}  # fmt: skip
        self.store.put(key, json.dumps(body, separators=(",", ":")).encode("utf-8"))

    def maybe_compact(self) -> None:
        """After a write: compact now and then, and build the first index of a small remote."""
        if self.store.size(HEAD_KEY) is None:
            if len(layout.entry_keys(self.store)) <= FIRST_BUILD_MAX:
                self.compact()
            else:
                log.warning("remote %s has no index; build it with `adapterhub registry compact --remote REMOTE`",
                            self.store.url)  # fmt: skip
        elif random.random() < 1 / COMPACT_EVERY:
            self.compact()

    def compact(self, *, rebuild: bool = False) -> bool:
        """Write the index as of now as a snapshot and point HEAD at it; False when another compaction moved
        HEAD first (its snapshot is as good). `rebuild` reads every entry instead of the last snapshot."""
        fold = self._fold(rebuild=rebuild)
        if fold is None:  # no index yet: every entry, then the whole log
            fold = self._fold(rebuild=True)
        assert fold is not None
        return self._write(fold)

    def _write(self, fold: _Fold) -> bool:
        """Write `fold` as a snapshot and move HEAD to it if HEAD is still what `fold` was read from."""
        young = [k for k, pending in fold.window if pending and time.time() - _log_time(k) < STALE_S]
        covered = [k for k, _ in fold.window if not young or k < young[0]]
        covers = max([fold.covers, *covered])
        floor = _log_time(covers) - MARGIN_S
        folded = [k for k in {*fold.folded, *covered} if _log_time(k) >= floor and k <= covers]
        data = fold.state.encode(covers, folded)
        snapshot = hashlib.sha256(data).hexdigest()
        self.store.create(f"{SNAPSHOT_PREFIX}{snapshot}.json.gz", data)  # already there: the same bytes
        head = {"format": INDEX_FORMAT, "snapshot": snapshot, "covers": covers, "written_at": time.time()}
        return self.store.replace_if(HEAD_KEY, json.dumps(head).encode("utf-8"), fold.head_token)

    def head(self) -> dict[str, Any] | None:
        found = self.store.read_with_token(HEAD_KEY)
        return None if found is None else _parse_head(found[0])

    def _fold(self, *, rebuild: bool = False) -> _Fold | None:
        found = self.store.read_with_token(HEAD_KEY)
        if found is None and not rebuild:
            return None
        head: dict[str, str] = _parse_head(found[0]) if found else {"snapshot": "", "covers": ""}
        token = found[1] if found else None
        folded: set[str]
        with ThreadPoolExecutor(1) as pool:
            listing = pool.submit(
                self.store.list_after, LOG_PREFIX, window_start(head["covers"]) if not rebuild else ""
            )
            if rebuild:
                base, folded = read_truth(self.store, self.cache), set()
            else:
                base, folded = self._load_snapshot(head["snapshot"], retry=True)
            keys = tuple(k for k in listing.result() if k not in folded and k.endswith(".json"))
        if self._memo is not None and self._memo[:2] == (token, keys) and not rebuild:
            return _Fold(self._memo[2], token, head["covers"], folded, [(k, False) for k in keys])
        state, window = base.copy(), []
        cached = self.cache.get_many(list(keys))
        fetched = self.store.read_many([k for k in keys if k not in cached])
        bodies = {**cached, **fetched}
        pending_names = set()
        for key in keys:
            if key not in bodies:
                continue  # deleted since listed: a slow writer's first key (see `commit`)
            body = _parse_log(bodies[key], key)
            window.append((key, body["state"] != "done"))
            if body["state"] == "done":
                state.apply(body)
            else:
                pending_names.add(body["name"])
                fetched.pop(key, None)  # a pending object changes when its write finishes: not cached
        self.cache.put_many(fetched)
        for name in sorted(pending_names):
            state.replace_name(name, read_truth(self.store, self.cache, name))
        if not pending_names and not rebuild:
            self._memo = (token, keys, state) if token is not None else None
        return _Fold(state, token, head["covers"], folded, window)

    def _load_snapshot(self, snapshot: str, retry: bool = False) -> tuple[IndexState, set[str]]:
        if self._snapshot is not None and self._snapshot[0] == snapshot:
            return self._snapshot[1], self._snapshot[2]
        key = f"{SNAPSHOT_PREFIX}{snapshot}.json.gz"
        data = self.cache.get_many([key]).get(key)
        if data is None or hashlib.sha256(data).hexdigest() != snapshot:
            try:
                data = self.store.read(key)
            except FileNotFoundError:
                head = self.head()  # a compaction moved HEAD and `gc` removed the snapshot since it was read
                if retry and head is not None and head["snapshot"] != snapshot:
                    return self._load_snapshot(head["snapshot"])
                raise RegistryError(
                    f"remote {self.store.url}: the index names snapshot {snapshot}, which is missing; rebuild it "
                    "with `adapterhub registry compact --remote REMOTE --rebuild`"
                ) from None
            self.cache.put_many({key: data})
        state, folded = IndexState.decode(data, key)
        self._snapshot = (snapshot, state, folded)
        return state, folded


def _parse_head(data: bytes) -> dict[str, Any]:
    try:
        head = json.loads(data)
        if head.get("format") != INDEX_FORMAT:
            raise RegistryError(
                f"remote index {HEAD_KEY} has format {head.get('format')!r}; upgrade adapterhub-registry"
            )
        if not isinstance(head["covers"], str) or not isinstance(head["snapshot"], str):
            raise TypeError("snapshot and covers are not strings")
        return head
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RegistryError(
            f"remote index {HEAD_KEY} is damaged ({exc}); rebuild it with "
            "`adapterhub registry compact --remote REMOTE --rebuild`"
        ) from exc


def _parse_log(data: bytes, key: str) -> dict[str, Any]:
    try:
        body = json.loads(data)
        validate_name(body["name"])
        if body.get("format") != INDEX_FORMAT or body["state"] not in ("pending", "done"):
            raise ValueError(f"format {body.get('format')!r}, state {body.get('state')!r}")
        return body
    except (ValueError, TypeError, KeyError, AttributeError, RegistryError) as exc:
        raise RegistryError(
            f"remote index log object {key} is damaged ({exc}); remove it and rebuild the index with "
            "`adapterhub registry compact --remote REMOTE --rebuild`"
        ) from exc


def select(
    records: list[AdapterRecord],
    *,
    name: str | None = None,
    method: str | None = None,
    base_fingerprint: str | None = None,
    tag: str | None = None,
    metrics: Sequence[MetricFilter] = (),
    all_versions: bool = False,
) -> list[AdapterRecord]:
    """The records matching every filter; only each name's newest match unless `all_versions` (as
    `Registry.list`; `records` sorted by name and version)."""
    found = [
        r for r in records
        if (name is None or r.name == name) and (method is None or r.method == method)
        and (base_fingerprint is None or r.base_fingerprint == base_fingerprint) and (tag is None or tag in r.tags)
        and all(_passes(r.metrics.get(m.metric), m) for m in metrics)
    ]  # fmt: skip
    if all_versions:
        return found
    return list({r.name: r for r in found}.values())  # sorted by version, so each name's last one stays


def matches(record: AdapterRecord, query: str) -> bool:
    """Whether `query` (lower case) is in the name, method, a tag or the description, as `Registry.search`."""
    return (query in record.name.lower() or query in record.method.lower()
            or any(query in t.lower() for t in record.tags)
            or query in str(record.manifest.get("description") or "").lower())  # fmt: skip


def _passes(value: Any, condition: MetricFilter) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False  # as the local index: a version without the metric never passes a metric filter
    return {
        ">=": value >= condition.value, "<=": value <= condition.value, ">": value > condition.value,
        "<": value < condition.value, "=": value == condition.value, "!=": value != condition.value,
    }[condition.op]  # fmt: skip
