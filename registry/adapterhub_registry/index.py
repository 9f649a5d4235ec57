"""The SQLite index: which name/version points at which blob, with its config, manifest, metrics and tags.

Several processes (training jobs, an evaluation loop, the CLI) may share one registry, so the database runs
in WAL mode (readers never block the writer), every write is one `BEGIN IMMEDIATE` transaction, and a
writer that finds the database locked retries with backoff instead of surfacing "database is locked".
Listing reads one query however many rows match, so `list`/`search` stay fast at tens of thousands of
entries. Version numbers are never reused, even after a delete, so a pulled copy labelled `name@3` always
means the same bytes.

`blob_checksums` holds each blob's xxh3-128, the fast check of local loads (see blobs.py). It is keyed by
the blob's sha256, so a row can never be wrong for the content it names, even one left behind by an older
adapterhub-registry that deleted the blob without knowing the table. Adding the table is the whole
migration of an older index: `CREATE TABLE IF NOT EXISTS` inside the `BEGIN IMMEDIATE` transaction every
open runs, so concurrent openers add it once; older readers and writers never name it, so they keep
working on a migrated index and the schema version that would lock them out stays 1. Blobs without a row
are checked with sha256 on their next load, which then records the row.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from adapterhub_registry.errors import NotFoundError, RegistryError
from adapterhub_registry.names import Ref
from adapterhub_registry.paging import PageQuery, page_sql
from adapterhub_registry.records import AdapterRecord

SCHEMA_VERSION = 1
_BUSY_TIMEOUT_MS = 5_000
_LOCK_GIVE_UP_S = 300.0
_TAG_SEP = "\x1f"  # cannot occur in a tag (see names.py)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS adapters (
    name TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version > 0),
    method TEXT NOT NULL,
    base_fingerprint TEXT,
    peft_config TEXT NOT NULL,
    manifest TEXT NOT NULL,
    metrics TEXT NOT NULL,
    blob_sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (name, version)
);
CREATE INDEX IF NOT EXISTS adapters_name ON adapters (name);
CREATE INDEX IF NOT EXISTS adapters_method ON adapters (method);
CREATE INDEX IF NOT EXISTS adapters_base ON adapters (base_fingerprint);
CREATE INDEX IF NOT EXISTS adapters_blob ON adapters (blob_sha256);
CREATE INDEX IF NOT EXISTS adapters_created ON adapters (created_at);
CREATE TABLE IF NOT EXISTS tags (
    name TEXT NOT NULL,
    tag TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (name, tag)
);
CREATE INDEX IF NOT EXISTS tags_version ON tags (name, version);
CREATE TABLE IF NOT EXISTS version_counters (
    name TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blob_checksums (
    blob_sha256 TEXT PRIMARY KEY,
    xxh3_128 TEXT NOT NULL
);
"""

_COLUMNS = (
    "a.name, a.version, a.method, a.base_fingerprint, a.peft_config, a.manifest, a.metrics, "
    "a.blob_sha256, a.size_bytes, a.created_at, "
    "(SELECT group_concat(t.tag, char(31)) FROM tags t WHERE t.name = a.name AND t.version = a.version) AS tags"
)

_SET_CHECKSUM = "INSERT OR REPLACE INTO blob_checksums (blob_sha256, xxh3_128) VALUES (?, ?)"

T = TypeVar("T")


class Index:
    """One SQLite connection to `<root>/index.sqlite`, reopened after fork, serialised across threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._pid = -1
        self._connection: sqlite3.Connection | None = None
        with self.write() as writer:
            writer.create_schema()

    @property
    def _conn(self) -> sqlite3.Connection:
        # A connection inherited through fork() must not be used by the child; open a new one there.
        if self._connection is None or self._pid != os.getpid():
            self._connection = _retry_locked(lambda: _connect(self.path), self.path)
            self._pid = os.getpid()
        return self._connection

    def close(self) -> None:
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None

    @contextmanager
    def write(self) -> Iterator[Writer]:
        """One `BEGIN IMMEDIATE` transaction: committed on success, rolled back on any exception."""
        with self._lock:
            conn = self._conn
            _retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"), self.path)
            try:
                yield Writer(conn)
                _retry_locked(lambda: conn.execute("COMMIT"), self.path)
            except sqlite3.Error as exc:
                if conn.in_transaction:  # SQLite has already rolled back after some errors (e.g. SQLITE_FULL)
                    conn.execute("ROLLBACK")
                raise RegistryError(f"registry index {self.path}: {exc}; {_advice(exc)}") from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for one read, with SQLite errors (a damaged file) turned into `RegistryError`."""
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise RegistryError(f"registry index {self.path}: {exc}; {_advice(exc)}") from exc

    def find(self, ref: Ref) -> AdapterRecord | None:
        with self._reading() as conn:
            return _find(conn, ref)

    def describe_name(self, name: str) -> str:
        """What exists under `name` (versions and tags), for not-found messages."""
        with self._reading() as conn:
            versions = [
                v for (v,) in conn.execute("SELECT version FROM adapters WHERE name = ? ORDER BY version", (name,))
            ]
            tags = [
                f"{t}->@{v}"
                for t, v in conn.execute("SELECT tag, version FROM tags WHERE name = ? ORDER BY tag", (name,))
            ]
        if not versions:
            return f"no adapter named {name!r} exists; run `adapterhub registry list` to see the stored names"
        text = f"{name!r} has versions {', '.join(f'@{v}' for v in versions)}"
        return text + (f" and tags {', '.join(tags)}" if tags else " and no tags")

    def query(
        self,
        *,
        name: str | None = None,
        method: str | None = None,
        base_fingerprint: str | None = None,
        tag: str | None = None,
        all_versions: bool = False,
        limit: int | None = None,
    ) -> list[AdapterRecord]:
        """Matching versions in one query; unless `all_versions`, only the newest matching version per name."""
        where, params = _filters("a", name, method, base_fingerprint, tag)
        if not all_versions:
            # Newest among the *matching* versions, so a filter never hides an older version that matches.
            inner, inner_params = _filters("b", name, method, base_fingerprint, tag)
            inner_where = " AND ".join(["b.name = a.name", *inner])
            where.append(f"a.version = (SELECT max(b.version) FROM adapters b WHERE {inner_where})")
            params += inner_params
        sql = f"SELECT {_COLUMNS} FROM adapters a WHERE {' AND '.join(where) or '1'} ORDER BY a.name, a.version LIMIT ?"
        with self._reading() as conn:
            return _records(conn.execute(sql, (*params, _sql_limit(limit))))

    def search(self, text: str, limit: int | None) -> list[AdapterRecord]:
        """Newest versions whose name, method, a tag or manifest description contains `text` (ASCII case-insensitive)."""
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        sql = f"""
            SELECT {_COLUMNS} FROM adapters a
            WHERE a.version = (SELECT max(b.version) FROM adapters b WHERE b.name = a.name)
              AND (a.name LIKE :p ESCAPE '\\' OR a.method LIKE :p ESCAPE '\\'
                   OR json_extract(a.manifest, '$.description') LIKE :p ESCAPE '\\'
                   OR EXISTS (SELECT 1 FROM tags t
                              WHERE t.name = a.name AND t.version = a.version AND t.tag LIKE :p ESCAPE '\\'))
            ORDER BY a.name LIMIT :limit
        """
        with self._reading() as conn:
            return _records(conn.execute(sql, {"p": pattern, "limit": _sql_limit(limit)}))

    def page(self, query: PageQuery) -> tuple[list[AdapterRecord], int]:
        """One page of newest-matching versions and the number of names that match (see paging.py)."""
        select, count, params = page_sql(query, _COLUMNS)
        with self._reading() as conn:
            (total,) = conn.execute(count, params).fetchone()
            return _records(conn.execute(select, params)), total

    def peft_config_text(self, record: AdapterRecord) -> str:
        """adapter_config.json of `record` exactly as it was pushed."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT peft_config FROM adapters WHERE name = ? AND version = ?", (record.name, record.version)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"adapter {record.ref} was deleted while it was being read; resolve the ref again")
        return row[0]

    def checksum(self, blob_sha256: str) -> str | None:
        """The recorded xxh3-128 of a blob, or None when no push or verified load has recorded it yet."""
        with self._reading() as conn:
            row = conn.execute("SELECT xxh3_128 FROM blob_checksums WHERE blob_sha256 = ?", (blob_sha256,)).fetchone()
        return row[0] if row else None

    def remember_checksum(self, blob_sha256: str, checksum: str) -> None:
        """Record a checksum found by a load, if the index can be written right now.

        One statement, no retry loop beyond SQLite's busy timeout: a reader must not wait minutes on other
        writers for what is only a speed-up, and a later load records it when this one could not (read-only
        disk, a lock held too long).
        """
        with self._lock, contextlib.suppress(sqlite3.Error, RegistryError):
            self._conn.execute(_SET_CHECKSUM, (blob_sha256, checksum))

    def blob_usage(self) -> list[tuple[str, str, int]]:
        """(ref, blob sha256, size) of every stored version, for `verify`."""
        with self._reading() as conn:
            rows = conn.execute("SELECT name, version, blob_sha256, size_bytes FROM adapters ORDER BY name, version")
            return [(f"{name}@{version}", sha, size) for name, version, sha, size in rows]


class Writer:
    """The statements allowed inside `Index.write()`; each call is part of the caller's transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def create_schema(self) -> None:
        (found,) = self._conn.execute("PRAGMA user_version").fetchone()
        if found > SCHEMA_VERSION:
            raise RegistryError(
                f"the registry index was written by a newer adapterhub-registry (schema {found} > {SCHEMA_VERSION}); "
                "upgrade adapterhub-registry to use it"
            )
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._conn.execute(statement)
        self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def find(self, ref: Ref) -> AdapterRecord | None:
        return _find(self._conn, ref)

    def add_version(
        self,
        *,
        name: str,
        method: str,
        base_fingerprint: str | None,
        peft_config_text: str,
        manifest: dict[str, Any],
        metrics: dict[str, Any],
        blob_sha256: str,
        size_bytes: int,
        created_at: float,
    ) -> int:
        """Insert the next version of `name` and return its number.

        `peft_config_text` is stored verbatim so `pull`/`export_peft` give back the exact adapter_config.json.
        """
        (version,) = self._conn.execute(
            "SELECT 1 + max(coalesce((SELECT last_version FROM version_counters WHERE name = :n), 0),"
            " coalesce((SELECT max(version) FROM adapters WHERE name = :n), 0))",
            {"n": name},
        ).fetchone()
        self._conn.execute(
            "INSERT INTO adapters (name, version, method, base_fingerprint, peft_config, manifest, metrics,"
            " blob_sha256, size_bytes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                version,
                method,
                base_fingerprint,
                peft_config_text,
                _to_json(manifest, "manifest"),
                _to_json(metrics, "metrics"),
                blob_sha256,
                size_bytes,
                created_at,
            ),
        )
        self._conn.execute(
            "INSERT INTO version_counters (name, last_version) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET last_version = excluded.last_version",
            (name, version),
        )
        return version

    def set_tag(self, name: str, tag: str, version: int) -> None:
        self._conn.execute(
            "INSERT INTO tags (name, tag, version) VALUES (?, ?, ?)"
            " ON CONFLICT (name, tag) DO UPDATE SET version = excluded.version",
            (name, tag, version),
        )

    def remove_tag(self, name: str, tag: str) -> bool:
        return self._conn.execute("DELETE FROM tags WHERE name = ? AND tag = ?", (name, tag)).rowcount > 0

    def set_metrics(self, name: str, version: int, metrics: dict[str, Any]) -> None:
        self._conn.execute(
            "UPDATE adapters SET metrics = ? WHERE name = ? AND version = ?",
            (_to_json(metrics, "metrics"), name, version),
        )

    def delete(self, records: list[AdapterRecord]) -> None:
        for record in records:
            self._conn.execute("DELETE FROM adapters WHERE name = ? AND version = ?", (record.name, record.version))
            self._conn.execute("DELETE FROM tags WHERE name = ? AND version = ?", (record.name, record.version))

    def versions_of(self, name: str) -> list[AdapterRecord]:
        sql = f"SELECT {_COLUMNS} FROM adapters a WHERE a.name = ? ORDER BY a.version"
        return _records(self._conn.execute(sql, (name,)))

    def referenced_digests(self) -> set[str]:
        return {row[0] for row in self._conn.execute("SELECT DISTINCT blob_sha256 FROM adapters")}

    def set_checksum(self, blob_sha256: str, checksum: str) -> None:
        self._conn.execute(_SET_CHECKSUM, (blob_sha256, checksum))

    def forget_checksums(self, digests: set[str]) -> None:
        """Drop the checksums of blobs being removed (a row that stayed would still be right, just unused)."""
        self._conn.executemany("DELETE FROM blob_checksums WHERE blob_sha256 = ?", [(d,) for d in digests])


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")  # a push that returned survives a power cut
    return conn


def _find(conn: sqlite3.Connection, ref: Ref) -> AdapterRecord | None:
    params: tuple[int | str, ...]
    if ref.version is not None:
        where, params = "a.version = ?", (ref.version,)
    elif ref.tag is not None:
        where, params = "a.version = (SELECT version FROM tags WHERE name = a.name AND tag = ?)", (ref.tag,)
    else:
        where, params = "1", ()
    sql = f"SELECT {_COLUMNS} FROM adapters a WHERE a.name = ? AND {where} ORDER BY a.version DESC LIMIT 1"
    records = _records(conn.execute(sql, (ref.name, *params)))
    return records[0] if records else None


def _filters(
    alias: str, name: str | None, method: str | None, base_fingerprint: str | None, tag: str | None
) -> tuple[list[str], list[Any]]:
    """SQL conditions on table `alias` for the filters that are set, with their parameters."""
    where, params = [], []
    for column, value in (("name", name), ("method", method), ("base_fingerprint", base_fingerprint)):
        if value is not None:
            where.append(f"{alias}.{column} = ?")
            params.append(value)
    if tag is not None:
        where.append(
            f"EXISTS (SELECT 1 FROM tags t WHERE t.name = {alias}.name AND t.version = {alias}.version AND t.tag = ?)"
        )
        params.append(tag)
    return where, params


def _records(rows: Iterator[tuple[Any, ...]]) -> list[AdapterRecord]:
    # JSON columns stay text until a caller reads them (see records.py); this keeps list() fast.
    return [
        AdapterRecord.from_index_row(
            (
                name,
                version,
                method,
                base,
                config,
                manifest,
                metrics,
                tuple(sorted(tags.split(_TAG_SEP))) if tags else (),
                sha,
                size,
                created,
            )
        )  # fmt: skip
        for name, version, method, base, config, manifest, metrics, sha, size, created, tags in rows
    ]


def _to_json(value: dict[str, Any], what: str) -> str:
    if not isinstance(value, dict):
        raise RegistryError(f"{what} must be a JSON object (dict), got {type(value).__name__}")
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise RegistryError(
            f"{what} is not JSON-serialisable ({exc}); pass only str, numbers, bools, lists and dicts"
        ) from exc


def _advice(exc: sqlite3.Error) -> str:
    if "full" in str(exc).lower():
        return "the disk is full; free some space and try again (nothing was changed)"
    if "not a database" in str(exc) or "malformed" in str(exc):
        return "the index file is damaged; restore index.sqlite from a backup (the blobs are intact and verifiable)"
    return "nothing was changed; run `adapterhub registry verify`, or restore the index from a backup if this persists"


def _sql_limit(limit: int | None) -> int:
    if limit is None:
        return -1
    if limit < 0:
        raise RegistryError(f"limit must be a non-negative integer or None, got {limit}")
    return limit


def _retry_locked(operation: Callable[[], T], path: Path) -> T:
    """Run `operation`, retrying with jittered backoff while another process holds the database lock."""
    deadline = time.monotonic() + _LOCK_GIVE_UP_S
    delay = 0.01
    while True:
        try:
            return operation()
        except sqlite3.DatabaseError as exc:
            message = str(exc).lower()
            if not isinstance(exc, sqlite3.OperationalError):  # e.g. "file is not a database"
                raise RegistryError(f"registry index {path}: {exc}; {_advice(exc)}") from exc
            if "locked" not in message and "busy" not in message:
                raise RegistryError(
                    f"registry index {path}: {exc}; check that the directory is writable and the disk is not full"
                ) from exc
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"registry index {path} stayed locked by another process for {_LOCK_GIVE_UP_S:.0f} s; "
                    "find the stuck adapterhub process and stop it, then retry"
                ) from exc
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 1.0)
