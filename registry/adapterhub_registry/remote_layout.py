"""The layout of a remote registry, and the only code that writes it: blobs, version entries, tags.

```
<remote>/blobs/sha256/<hex>                      adapter_model.safetensors, content-addressed
<remote>/index/<name>/<version:010d>.json        one immutable entry per version (config, manifest, metrics, blob)
<remote>/tags/<name>/<tag>.json                  {"version": v, "seq": n, "history": [...]} moved by compare-and-swap
<remote>/deleted/<name>/<version:010d>.json      a tombstone: that version is deleted (created if absent)
<remote>/catalog/...                             the index that answers listings in one read (remote_index.py)
```

Several machines write this at once with no server in between, so every write is one of the store's atomic
operations (see remote_store.py). A version number is taken by creating its entry only if absent: two
pushes of the same name race for `max + 1`, one wins, the other takes the next number, and neither is lost.
A push writes the blob first and the entry last, so a push cut off at any point leaves at most a blob no
entry points at, never an entry without its bytes. A tag is read with its token and replaced only if the
token still holds, so a concurrent move is retried on the new state instead of being overwritten unseen.
Entries are never rewritten, so anything that read `name@3` once can cache it for good; deleting a version
adds a tombstone beside it instead (and `gc` later removes the blobs no live entry uses, remote_clean.py).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adapterhub_registry.errors import NotFoundError, RegistryError
from adapterhub_registry.names import Ref, validate_name
from adapterhub_registry.records import AdapterRecord
from adapterhub_registry.remote_store import RemoteStore

ENTRY_FORMAT = 1
_ENTRY_KEY = re.compile(r"index/([^/]+)/([0-9]{10})\.json")
_TAG_KEY = re.compile(r"tags/([^/]+)/([^/]+)\.json")
_DELETED_KEY = re.compile(r"deleted/([^/]+)/([0-9]{10})\.json")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_RACE_ROUNDS = 1000  # versions lost to concurrent pushers before giving up; reached only if something is broken
_TAG_RETRIES = 50
BLOB_REUSE_S = 1800.0  # half of remote_clean.MIN_GRACE_S (see upload_blob)


def blob_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256}"


def entry_key(name: str, version: int) -> str:
    return f"index/{name}/{version:010d}.json"


def tag_key(name: str, tag: str) -> str:
    return f"tags/{name}/{tag}.json"


def deleted_key(name: str, version: int) -> str:
    return f"deleted/{name}/{version:010d}.json"


@dataclass(frozen=True)
class RemoteEntry:
    """One version on a remote: everything a local registry needs to record it, except the blob's bytes."""

    name: str
    version: int
    method: str
    base_fingerprint: str | None
    peft_config_text: str
    manifest: dict[str, Any]
    metrics: dict[str, Any]
    blob_sha256: str
    size_bytes: int
    created_at: float
    signature: dict[str, Any] | None = None  # a model-signing bundle over the entry (remote_signing.py), if signed

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> bytes:
        fields = {k: v for k, v in self.__dict__.items() if not (k == "signature" and v is None)}
        body = {"format": ENTRY_FORMAT, **fields}  # an unsigned entry is written as before signatures existed
        return json.dumps(body, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, key: str) -> RemoteEntry:
        try:
            body = json.loads(data)
            if body.get("format") != ENTRY_FORMAT:
                raise RegistryError(
                    f"remote entry {key} has format {body.get('format')!r}; upgrade adapterhub-registry to read it"
                )
            entry = cls(**{k: v for k, v in body.items() if k != "format"})
            # Whoever can write the remote writes these fields: check what later becomes a path or a name.
            validate_name(entry.name)
            if not _SHA256.fullmatch(entry.blob_sha256) or not isinstance(entry.size_bytes, int):
                raise ValueError(f"blob {entry.blob_sha256!r} of size {entry.size_bytes!r} is not a sha256 and a size")
            if (match := _ENTRY_KEY.fullmatch(key)) and (match.group(1), int(match.group(2))) != (
                entry.name,
                entry.version,
            ):
                raise ValueError(f"it names {entry.ref}")
            return entry
        except (ValueError, TypeError, AttributeError) as exc:
            raise RegistryError(
                f"remote entry {key} is not a valid entry ({exc}); the remote index is damaged"
            ) from exc

    def record(self, tags: tuple[str, ...] = ()) -> AdapterRecord:
        """The entry as an `AdapterRecord`, with the remote's version number and `tags`."""
        return AdapterRecord(
            name=self.name, version=self.version, method=self.method, base_fingerprint=self.base_fingerprint,
            peft_config=json.loads(self.peft_config_text), manifest=self.manifest, metrics=self.metrics,
            tags=tuple(sorted(tags)), blob_sha256=self.blob_sha256, size_bytes=self.size_bytes,
            created_at=self.created_at,
        )  # fmt: skip


def upload_blob(store: RemoteStore, data: bytes, sha256: str) -> bool:
    """Put the blob unless the object there already holds exactly these bytes; True when it was uploaded.

    A blob of the right size is not enough to skip: a damaged one of the same size would stay for good (and
    every fetch refuse it), so the store checks its bytes (`RemoteStore.holds`: S3 compares the ETag, an MD5,
    without downloading) and a damaged blob is replaced. A blob older than `BLOB_REUSE_S` is written again
    even if intact, so `gc` (which collects unreferenced blobs older than at least `gc.MIN_GRACE_S`) cannot
    remove it under a push that is about to reference it.
    """
    found = store.stat(blob_key(sha256))
    if (found is not None and found[0] == len(data) and time.time() - found[1] < BLOB_REUSE_S
            and store.holds(blob_key(sha256), data)):  # fmt: skip
        return False
    store.put(blob_key(sha256), data)
    return True


def versions(store: RemoteStore, name: str) -> list[int]:
    """The version numbers of `name` on the remote, ascending, deleted ones included (numbers are never reused)."""
    return [int(m.group(2)) for key in store.list(f"index/{name}/") if (m := _ENTRY_KEY.fullmatch(key))]


def deleted_versions(store: RemoteStore, name: str | None = None) -> set[tuple[str, int]]:
    """(name, version) of every tombstone on the remote (or of `name`)."""
    keys = store.list(f"deleted/{name}/" if name else "deleted/")
    return {(m.group(1), int(m.group(2))) for key in keys if (m := _DELETED_KEY.fullmatch(key))}


def entry_keys(store: RemoteStore, name: str | None = None) -> list[tuple[str, int]]:
    """(name, version) of every entry on the remote (or of `name`), from one listing."""
    keys = store.list(f"index/{name}/" if name else "index/")
    return [(m.group(1), int(m.group(2))) for key in keys if (m := _ENTRY_KEY.fullmatch(key))]


def add_entry(
    store: RemoteStore,
    entry: RemoteEntry,
    newest: int | None = None,
    seal: Callable[[RemoteEntry], RemoteEntry] | None = None,
) -> RemoteEntry:
    """Write `entry` as the next free version of its name (its own `version` is ignored); returns it numbered.
    `seal` turns each numbered try into what is written (a signature over its version: remote_signing.py).

    `newest` is the newest version the caller has just listed (saves listing again); a stale one only costs
    a few failed creates.
    """
    if newest is None:
        existing = versions(store, entry.name)
        newest = existing[-1] if existing else 0
    version = newest + 1
    for _ in range(_MAX_RACE_ROUNDS):
        numbered = RemoteEntry(**{**entry.__dict__, "version": version, "created_at": time.time()})
        if seal is not None:
            numbered = seal(numbered)
        if store.create(entry_key(entry.name, version), numbered.to_json()):
            return numbered
        version += 1  # another pusher took it
    raise RegistryError(f"remote {store.url}: could not take a version of {entry.name} after {_MAX_RACE_ROUNDS} tries")


def read_entry(store: RemoteStore, name: str, version: int) -> RemoteEntry | None:
    try:
        data = store.read(entry_key(name, version))
    except FileNotFoundError:
        return None
    return RemoteEntry.from_json(data, entry_key(name, version))


def read_tag(store: RemoteStore, name: str, tag: str) -> tuple[dict[str, Any], str] | None:
    """The tag's object (`{"version": ..., "history": [...]}`) and its token, or None when there is no such tag."""
    found = store.read_with_token(tag_key(name, tag))
    if found is None:
        return None
    data, token = found
    try:
        body = json.loads(data)
        int(body["version"])
    except (ValueError, TypeError, KeyError) as exc:
        raise RegistryError(
            f"remote tag {tag_key(name, tag)} is damaged ({exc}); move it again with "
            f"`adapterhub registry tag --remote NAME {name}@VERSION {tag}`"
        ) from exc
    return body, token


def tag_seq(body: dict[str, Any]) -> int:
    """How many times the tag has moved (tags written before `seq` existed count their history)."""
    seq = body.get("seq")
    return seq if isinstance(seq, int) else len(body.get("history", [])) + (body.get("version") is not None)


def move_tag(store: RemoteStore, name: str, tag: str, version: int) -> int:
    """Point `name:tag` at `version`, appending the version it left to its history; retried on a concurrent move.
    Returns the tag's new `seq`."""
    for _ in range(_TAG_RETRIES):
        current = read_tag(store, name, tag)
        body, token = current if current else ({"version": None, "history": []}, None)
        history = list(body.get("history", []))
        if body["version"] is not None and body["version"] != version:
            history.append({"version": body["version"], "until": time.time()})
        # `seq` counts the moves, so the index orders two moves logged out of order (remote_index.py).
        seq = tag_seq(body) + 1
        new = {"version": version, "seq": seq, "history": history[-100:]}
        if store.replace_if(tag_key(name, tag), json.dumps(new, sort_keys=True).encode("utf-8"), token):
            return seq
    raise RegistryError(f"remote {store.url}: tag {name}:{tag} kept moving under us ({_TAG_RETRIES} tries); retry")


def resolve(store: RemoteStore, ref: Ref) -> RemoteEntry:
    """The entry `ref` names on the remote (`name` is its newest version)."""
    version = ref.version
    if ref.tag is not None:
        found = read_tag(store, ref.name, ref.tag)
        if found is None:
            raise NotFoundError(f"remote {store.url} has no tag {ref}; {_describe(store, ref.name)}")
        version = int(found[0]["version"])
    elif version is None:
        gone = deleted_versions(store, ref.name)
        existing = [v for v in versions(store, ref.name) if (ref.name, v) not in gone]
        if not existing:
            raise NotFoundError(
                f"remote {store.url} has no adapter {ref.name!r}; `adapterhub registry list --remote REMOTE` lists its adapters"
            )
        version = existing[-1]
    entry = read_entry(store, ref.name, version)
    if entry is None:
        raise NotFoundError(f"remote {store.url} has no {ref.name}@{version}; {_describe(store, ref.name)}")
    if store.size(deleted_key(ref.name, version)) is not None:
        raise NotFoundError(
            f"remote {store.url}: {ref.name}@{version} was deleted"
            + (f" (tag {ref} still points at it; move it)" if ref.tag else "")
            + f"; {_describe(store, ref.name)}"
        )
    return entry


def read_tags(store: RemoteStore, name: str | None = None) -> dict[tuple[str, str], tuple[int, int]]:
    """(name, tag) -> (version, seq) for every tag on the remote (or of `name`): one LIST, the tags read at once."""
    keys = [k for k in store.list(f"tags/{name}/" if name else "tags/") if _TAG_KEY.fullmatch(k)]
    found: dict[tuple[str, str], tuple[int, int]] = {}
    for key, data in store.read_many(keys).items():
        match = _TAG_KEY.fullmatch(key)
        assert match is not None  # the keys were filtered by this pattern above
        try:
            body = json.loads(data)
            found[(match.group(1), match.group(2))] = (int(body["version"]), tag_seq(body))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # a damaged tag names no version; `resolve` reports it when it is used
    return found


def tags_by_version(store: RemoteStore, name: str | None = None) -> dict[tuple[str, int], list[str]]:
    """(name, version) -> the tags pointing at it, for every tag on the remote (or of `name`)."""
    found: dict[tuple[str, int], list[str]] = {}
    for (tag_name, tag), (version, _) in sorted(read_tags(store, name).items()):
        found.setdefault((tag_name, version), []).append(tag)
    return found


def _describe(store: RemoteStore, name: str) -> str:
    gone = deleted_versions(store, name)
    existing = [v for v in versions(store, name) if (name, v) not in gone]
    if not existing:
        return f"it has no adapter {name!r}"
    return f"{name!r} has versions {', '.join(f'@{v}' for v in existing)}"
