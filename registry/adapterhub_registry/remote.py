"""`Remote`: one configured remote of a local registry — push to it, fetch from it, list, search and tag it.

A fetched version becomes the next local version of its name, and its manifest records where it came from
(`manifest["remote"]`: remote name, URL, the remote's `name@version` and the sha256), so `registry show`
answers "which bytes is this" across machines. Fetching the same remote version again returns that local
record instead of storing a copy, which is what a server resolving refs on a miss needs
(`registry.remote("origin").fetch("name:prod")`). Every fetch re-checks size and sha256 of the downloaded
blob before anything is stored locally.
"""

from __future__ import annotations

import builtins
import functools
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from adapterhub_registry import remote_clean
from adapterhub_registry import remote_layout as layout
from adapterhub_registry import remote_signing as signed
from adapterhub_registry.adapter_dir import CONFIG_FILE, WEIGHTS_FILE
from adapterhub_registry.blobs import sha256_hex
from adapterhub_registry.bundled_stores import bundled_stores
from adapterhub_registry.errors import CorruptBlobError, RegistryError
from adapterhub_registry.keys import SigningKey
from adapterhub_registry.names import parse_ref, validate_name, validate_tag
from adapterhub_registry.paging import MetricFilter
from adapterhub_registry.records import AdapterRecord
from adapterhub_registry.remote_cache import EntryCache
from adapterhub_registry.remote_config import RemoteConfig, RemoteConfigs
from adapterhub_registry.remote_index import RemoteIndex, matches, row, select
from adapterhub_registry.remote_store import RemoteStore, RemoteStoreSpec, open_store

if TYPE_CHECKING:
    from adapterhub_registry.registry import Registry

PROVENANCE_KEY = "remote"
"""The local manifest key that records where a fetched version came from."""


class Remote:
    """A remote of `registry`, opened on `store`; see the module docstring."""

    def __init__(self, registry: Registry, config: RemoteConfig, store: RemoteStore) -> None:
        self.registry, self.config, self.store = registry, config, store
        self.cache = EntryCache(registry.root, config.url)
        self.index = RemoteIndex(store, self.cache)  # what list and search read (remote_index.py)
        self._fetching = threading.Lock()  # one fetch at a time per process, so a ref is stored locally once

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:
        return f"Remote({self.name!r}, {self.config.url!r})"

    def push(
        self, ref: str, *, tags: list[str] | tuple[str, ...] = (), sign: SigningKey | None = None
    ) -> AdapterRecord:
        """Upload the local version `ref` as the remote's next version of its name (or reuse the remote's newest
        version when it holds the same bytes and config); `tags` then point at it there. Returns the remote's record.
        With `sign`, the version is signed with that key (remote_signing.py) and only an entry it signed is reused."""
        tag_list = list(dict.fromkeys(validate_tag(t) for t in tags))
        if sign is None and self.config.trusted_keys:
            raise RegistryError(
                f"remote {self.name} takes only signed adapters here (it trusts {len(self.config.trusted_keys)} "
                f"key(s)): sign the push (`adapterhub registry push-remote {self.name} {ref} --sign KEY.pem`)"
            )
        local = self.registry.resolve(ref)
        weights = self.registry.read_blob(local)  # sha256-checked: a damaged local copy is never uploaded
        config_text = self.registry.peft_config_text(local)
        versions = layout.versions(self.store, local.name)
        gone = layout.deleted_versions(self.store, local.name) if versions else set()
        live = [v for v in versions if (local.name, v) not in gone]
        newest = layout.read_entry(self.store, local.name, live[-1]) if live else None
        layout.upload_blob(self.store, weights, local.blob_sha256)  # the blob first (replaced if damaged)
        started = self.index.begin(local.name)  # then the index's pending log object, the entry, the log's result
        if (newest is not None and newest.blob_sha256 == local.blob_sha256 and newest.peft_config_text == config_text
                and (sign is None or signed.signed_by(newest, sign))):  # fmt: skip
            moved = [(t, newest.version, layout.move_tag(self.store, newest.name, t, newest.version)) for t in tag_list]
            self.index.commit(started, newest.name, tags=moved)
            return self._with_tags(newest)
        manifest = {k: v for k, v in local.manifest.items() if k != PROVENANCE_KEY}
        entry = layout.add_entry(self.store, layout.RemoteEntry(
            name=local.name, version=0, method=local.method, base_fingerprint=local.base_fingerprint,
            peft_config_text=config_text, manifest=manifest, metrics=local.metrics,
            blob_sha256=local.blob_sha256, size_bytes=local.size_bytes, created_at=time.time(),
        ), newest=versions[-1] if versions else 0,
           seal=None if sign is None else functools.partial(signed.sign_entry, key=sign))  # fmt: skip
        moved = [(t, entry.version, layout.move_tag(self.store, entry.name, t, entry.version)) for t in tag_list]
        self.index.commit(started, entry.name, rows=[row(entry)], tags=moved)
        self.index.maybe_compact()
        return entry.record(tuple(tag_list))  # a new version: no other tag can point at it yet

    def fetch(self, ref: str) -> AdapterRecord:
        """Bring the remote's `ref` (`name`, `name@version`, `name:tag` as the remote numbers them) into the
        local registry and return the local record; a version fetched before is not stored twice. A remote with
        trusted keys checks the entry's signature first and refuses (`SignatureError`) what they did not sign."""
        entry = layout.resolve(self.store, parse_ref(ref))
        signer = self.verify_signature(entry) if self.config.trusted_keys else None
        with self._fetching:
            cached = self.local_copy(entry.name, entry.version, entry.blob_sha256, signed_by=signer)
            if cached is not None:
                return cached
            weights = self._download(entry)
            with tempfile.TemporaryDirectory(prefix="adapterhub-fetch-") as directory:
                (Path(directory) / CONFIG_FILE).write_text(entry.peft_config_text, encoding="utf-8")
                (Path(directory) / WEIGHTS_FILE).write_bytes(weights)
                provenance = {
                    "name": self.name, "url": self.config.url, "ref": entry.ref, "version": entry.version,
                    "sha256": entry.blob_sha256, "fetched_at": time.time(), **({"signed_by": signer} if signer else {}),
                }  # fmt: skip
                return self.registry.push(
                    entry.name, directory, method=entry.method, base_fingerprint=entry.base_fingerprint,
                    manifest={**entry.manifest, PROVENANCE_KEY: provenance}, metrics=entry.metrics,
                )  # fmt: skip

    def local_copy(self, name: str, version: int, sha256: str, signed_by: str | None = None) -> AdapterRecord | None:
        """The local record fetched from this remote's `name@version` with that blob, if there is one (with
        `signed_by`, only one whose signature that key's fingerprint was verified when it was fetched)."""
        for record in reversed(self.registry.list(name=name, all_versions=True)):
            origin = provenance(record)
            if (origin is not None and origin.get("url") == self.config.url
                    and origin.get("version") == version and record.blob_sha256 == sha256
                    and (signed_by is None or origin.get("signed_by") == signed_by)):  # fmt: skip
                return record
        return None

    def verify_signature(self, entry: layout.RemoteEntry) -> str:
        """The fingerprint of the trusted key that signed `entry`; `SignatureError` naming it and why otherwise."""
        return signed.verify_entry(entry, self.config.trusted_keys, where=f"remote {self.name} ({self.config.url})")

    def resolve(self, ref: str) -> AdapterRecord:
        """The remote's record for `ref`, with the remote's version number and tags."""
        return self._with_tags(layout.resolve(self.store, parse_ref(ref)))

    def list(
        self,
        *,
        name: str | None = None,
        method: str | None = None,
        base_fingerprint: str | None = None,
        tag: str | None = None,
        all_versions: bool = False,
    ) -> builtins.list[AdapterRecord]:
        """Like `Registry.list`, from the remote's index (remote_index.py): only each name's newest match unless
        `all_versions`. Records carry the listing fields (the manifest's description only, no PEFT config);
        `resolve` reads a version's whole entry."""
        if name is not None:
            validate_name(name)
        state = self.index.state()
        records = state.records()
        if name is None and method is None and base_fingerprint is None and tag is None:
            return list(records if all_versions else state.newest())
        return select(records, name=name, method=method, base_fingerprint=base_fingerprint, tag=tag,
                      all_versions=all_versions)  # fmt: skip

    def search(
        self,
        query: str,
        *,
        limit: int | None = 50,
        method: str | None = None,
        base: str | None = None,
        tag: str | None = None,
        metrics: Sequence[MetricFilter | str] = (),
    ) -> builtins.list[AdapterRecord]:
        """Each name's newest version matching the filters whose name, method, tags or manifest "description"
        contain `query` (case-insensitive), as `Registry.page` picks them; `base` is a fingerprint or its prefix,
        `metrics` filters such as "accuracy>=0.7"."""
        conditions = [m if isinstance(m, MetricFilter) else MetricFilter.parse(m) for m in metrics]
        text = query.lower()
        state = self.index.state()
        filtered = method is not None or tag is not None or conditions
        if filtered:
            found = [r for r in select(state.records(), method=method, tag=tag, metrics=conditions) if matches(r, text)]
        else:
            found = state.search(text)
        found = [r for r in found if base is None or (r.base_fingerprint or "").startswith(base)]
        return found if limit is None else found[:limit]

    def compact(self, *, rebuild: bool = False) -> bool:
        """Write the remote's index as one snapshot (see remote_index.py); False if another compaction won."""
        return self.index.compact(rebuild=rebuild)

    def delete(self, ref: str) -> AdapterRecord:
        """Delete the remote's version `ref` (`name@version`): a tombstone; refused while a tag points at it."""
        return remote_clean.delete_version(self.index, ref).record()

    def gc(self, grace_s: float = remote_clean.DEFAULT_GRACE_S, *, dry_run: bool = False) -> remote_clean.GcReport:
        """Remove the blobs no live version uses, and the index's replaced objects, older than `grace_s`."""
        return remote_clean.collect(self.index, grace_s, dry_run=dry_run)

    def verify(self) -> remote_clean.RemoteVerifyReport:
        """Re-hash every live version's blob on the remote and check the index against the entries."""
        return remote_clean.verify(self.index)

    def tag(self, ref: str, tag: str) -> AdapterRecord:
        """Point the remote's `tag` at the version `ref` names on the remote (moved atomically)."""
        entry = layout.resolve(self.store, parse_ref(ref))
        started = self.index.begin(entry.name)
        seq = layout.move_tag(self.store, entry.name, validate_tag(tag), entry.version)
        self.index.commit(started, entry.name, tags=[(tag, entry.version, seq)])
        return self._with_tags(entry)

    def _with_tags(self, entry: layout.RemoteEntry) -> AdapterRecord:
        tags = layout.tags_by_version(self.store, entry.name).get((entry.name, entry.version), [])
        return entry.record(tuple(tags))

    def _download(self, entry: layout.RemoteEntry) -> bytes:
        key = layout.blob_key(entry.blob_sha256)
        where = f"remote {self.name} ({self.config.url}): blob {key} of {entry.ref}"
        advice = f"push {entry.name} again from a machine that has a good copy (`adapterhub registry push-remote`)"
        try:
            data = self.store.read(key)
        except FileNotFoundError:
            raise CorruptBlobError(f"{where} is missing; {advice}") from None
        if len(data) != entry.size_bytes:
            raise CorruptBlobError(f"{where} has {len(data)} bytes, expected {entry.size_bytes}; refused. {advice}")
        if (digest := sha256_hex(data)) != entry.blob_sha256:
            raise CorruptBlobError(
                f"{where} hashes to {digest}, not {entry.blob_sha256}: it is damaged; refused. {advice}"
            )
        return data


def open_remote(registry: Registry, name: str, stores: dict[str, RemoteStoreSpec] | None = None) -> Remote:
    """The remote `name` configured in `registry`, opened with the backend for its URL's scheme.

    `stores` maps schemes to backends; None means the bundled S3 and file stores (adapterhub passes the
    ones its plugins register).
    """
    config = RemoteConfigs(registry.root).get(name)
    return Remote(registry, config, open_store(config.url, config.endpoint_url, stores or bundled_stores()))


def provenance(record: AdapterRecord) -> dict | None:
    """Where a local record was fetched from (remote name, URL, remote ref, sha256), or None if pushed here."""
    origin = record.manifest.get(PROVENANCE_KEY)
    return origin if isinstance(origin, dict) else None


__all__ = ["PROVENANCE_KEY", "Remote", "open_remote", "provenance"]
