"""The layout of a remote registry, and the only code that writes it: blobs, version entries, tags.

```
<remote>/blobs/sha256/<hex>                      adapter_model.safetensors, content-addressed
<remote>/index/<name>/<version:010d>.json        one immutable entry per version (config, manifest, metrics, blob)
<remote>/tags/<name>/<tag>.json                  {"version": v, "history": [...]} moved by compare-and-swap
```

Several machines write this at once with no server in between, so every write is one of the store's atomic
operations (see remote_store.py). A version number is taken by creating its entry only if absent: two
pushes of the same name race for `max + 1`, one wins, the other takes the next number, and neither is lost.
A push writes the blob first and the entry last, so a push cut off at any point leaves at most a blob no
entry points at, never an entry without its bytes. A tag is read with its token and replaced only if the
token still holds, so a concurrent move is retried on the new state instead of being overwritten unseen.
Entries are never rewritten, so anything that read `name@3` once can cache it for good.
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
from adapterhub_registry.remote_cache import EntryCache
from adapterhub_registry.remote_store import RemoteStore

ENTRY_FORMAT = 1
_ENTRY_KEY = re.compile(r"index/([^/]+)/([0-9]{10})\.json")
_TAG_KEY = re.compile(r"tags/([^/]+)/([^/]+)\.json")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_RACE_ROUNDS = 1000  # versions lost to concurrent pushers before giving up; reached only if something is broken
_TAG_RETRIES = 50


def blob_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256}"


def entry_key(name: str, version: int) -> str:
    return f"index/{name}/{version:010d}.json"


def tag_key(name: str, tag: str) -> str:
    return f"tags/{name}/{tag}.json"


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
    """Put the blob unless an object of its size is already there; True when it was uploaded.

    Its sha256 is not re-checked here (that would download it): every fetch checks it instead.
    """
    if store.size(blob_key(sha256)) == len(data):
        return False
    store.put(blob_key(sha256), data)
    return True


def versions(store: RemoteStore, name: str) -> list[int]:
    """The version numbers of `name` on the remote, ascending."""
    return [int(m.group(2)) for key in store.list(f"index/{name}/") if (m := _ENTRY_KEY.fullmatch(key))]


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


def move_tag(store: RemoteStore, name: str, tag: str, version: int) -> None:
    """Point `name:tag` at `version`, appending the version it left to its history; retried on a concurrent move."""
    for _ in range(_TAG_RETRIES):
        current = read_tag(store, name, tag)
        body, token = current if current else ({"version": None, "history": []}, None)
        history = list(body.get("history", []))
        if body["version"] is not None and body["version"] != version:
            history.append({"version": body["version"], "until": time.time()})
        new = {"version": version, "history": history[-100:]}
        if store.replace_if(tag_key(name, tag), json.dumps(new, sort_keys=True).encode("utf-8"), token):
            return
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
        existing = versions(store, ref.name)
        if not existing:
            raise NotFoundError(
                f"remote {store.url} has no adapter {ref.name!r}; `adapterhub registry list --remote REMOTE` lists its adapters"
            )
        version = existing[-1]
    entry = read_entry(store, ref.name, version)
    if entry is None:
        raise NotFoundError(f"remote {store.url} has no {ref.name}@{version}; {_describe(store, ref.name)}")
    return entry


def tags_by_version(store: RemoteStore, name: str | None = None) -> dict[tuple[str, int], list[str]]:
    """(name, version) -> the tags pointing at it, for every tag on the remote (or of `name`)."""
    keys = [k for k in store.list(f"tags/{name}/" if name else "tags/") if _TAG_KEY.fullmatch(k)]
    found: dict[tuple[str, int], list[str]] = {}
    for key, data in store.read_many(keys).items():
        match = _TAG_KEY.fullmatch(key)
        assert match is not None  # the keys were filtered by this pattern above
        tag_name, tag = match.groups()
        try:
            found.setdefault((tag_name, int(json.loads(data)["version"])), []).append(tag)
        except (ValueError, TypeError, KeyError):
            continue  # a damaged tag names no version; `resolve` reports it when it is used
    return found


def all_entries(
    store: RemoteStore, *, name: str | None = None, all_versions: bool = False, cache: EntryCache | None = None
) -> list[RemoteEntry]:
    """Entries of the remote sorted by name and version: one LIST of the index, then the entries not in `cache`
    read at once (and added to it)."""
    if name is not None:
        validate_name(name)
    newest: dict[str, int] = {}
    keys = []
    for key in store.list(f"index/{name}/" if name else "index/"):
        if match := _ENTRY_KEY.fullmatch(key):
            keys.append(key)
            newest[match.group(1)] = max(newest.get(match.group(1), 0), int(match.group(2)))
    if not all_versions:
        keys = [entry_key(n, v) for n, v in newest.items()]
    found = cache.get_many(keys) if cache is not None else {}
    fetched = store.read_many([k for k in keys if k not in found])
    if cache is not None:
        cache.put_many(fetched)
    entries = [RemoteEntry.from_json(data, key) for key, data in {**found, **fetched}.items()]
    return sorted(entries, key=lambda e: (e.name, e.version))


def _describe(store: RemoteStore, name: str) -> str:
    existing = versions(store, name)
    if not existing:
        return f"it has no adapter {name!r}"
    return f"{name!r} has versions {', '.join(f'@{v}' for v in existing)}"
