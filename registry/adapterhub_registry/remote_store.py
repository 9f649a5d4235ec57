"""What a remote registry needs from a storage backend, and how a remote URL picks its backend.

A remote is a URL (`s3://bucket/prefix`, `file:///shared/adapters`); its scheme names a `RemoteStoreSpec`
whose `open(url, endpoint_url)` returns a `RemoteStore`. The bundled stores (S3 and file) are listed by
`bundled_stores.bundled_stores()` (a module of its own: the stores import this one); adapterhub adds those of plugins through its `adapterhub_remote_stores` hook. The remote
layout (remote_layout.py) is written against this small interface only, so the guarantees it relies on are
spelled out here, once: whole-object writes that are never seen half done, and two conditional writes.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from adapterhub_registry.errors import RegistryError


class RemoteStoreError(RegistryError):
    """The remote store could not be reached or refused a request (credentials, bucket, network)."""


class RemoteStore(ABC):
    """Objects under one root, addressed by `/`-separated keys relative to it (`blobs/sha256/<hex>`).

    `token` values are opaque: whatever the store uses to tell one content of an object from the next (an
    S3 ETag, a generation number); `replace_if` compares them.
    """

    url: str

    @abstractmethod
    def read(self, key: str) -> bytes:
        """The object's bytes; `FileNotFoundError` when there is none."""

    @abstractmethod
    def read_with_token(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and the token of exactly that content, or None when there is none."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None when there is none."""

    @abstractmethod
    def stat(self, key: str) -> tuple[int, float] | None:
        """The object's size and when it was last written (seconds since the epoch), or None when there is none."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix` (recursively), sorted; [] when there is none."""

    @abstractmethod
    def read_many(self, keys: builtins.list[str]) -> dict[str, bytes]:
        """The bytes of each key that exists (fetched concurrently where the store can)."""

    def list_after(self, prefix: str, after: str) -> builtins.list[str]:
        """The keys under `prefix` that sort after `after`, sorted; a store that can start a listing at a key
        (S3's `StartAfter`) overrides this so a long prefix is not listed from its start."""
        return [key for key in self.list(prefix) if key > after]

    @abstractmethod
    def modified(self, prefix: str) -> dict[str, float]:
        """Every key under `prefix` with the time it was last written (seconds since the epoch)."""

    def holds(self, key: str, data: bytes) -> bool:
        """True when the object `key` has exactly the bytes `data` (a store that keeps a digest of its objects
        overrides this to check without downloading)."""
        try:
            return self.read(key) == data
        except FileNotFoundError:
            return False

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; nothing happens when there is none."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write the whole object; readers see the old object, no object, or all of `data`, never a part."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Write the object only if no object has the key, atomically: of concurrent creators exactly one
        gets True; the others get False and the winner's object stays."""

    @abstractmethod
    def replace_if(self, key: str, data: bytes, token: str | None) -> bool:
        """Compare-and-swap: write only if the object still has `token` (or, with None, does not exist).
        False, writing nothing, when another writer got there first."""


@dataclass(frozen=True)
class RemoteStoreSpec:
    """A storage backend for remotes: `name` is the URL scheme it serves (`s3`, `file`, `gcs`, ...)."""

    name: str
    description: str
    open: Callable[[str, str | None], RemoteStore]  # (url, endpoint_url or None) -> store


def check_url(url: str) -> str:
    """`url` unchanged if it is a remote URL with a scheme and a location; raise with an example otherwise."""
    if not isinstance(url, str):
        raise RegistryError(f"a remote URL must be a string, got {type(url).__name__}")
    parts = urlsplit(url)
    if not parts.scheme or "://" not in url:
        raise RegistryError(f"{url!r} is not a remote URL; write s3://bucket/prefix or file:///absolute/path")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise RegistryError(
                f"{url!r}: a file URL needs three slashes and an absolute path, e.g. file:///srv/adapters"
            )
    elif not parts.netloc:
        raise RegistryError(f"{url!r} names no bucket or host; write {parts.scheme}://bucket/prefix")
    return url


def open_store(url: str, endpoint_url: str | None, stores: dict[str, RemoteStoreSpec]) -> RemoteStore:
    """The store for `url` from the backend registered for its scheme."""
    scheme = urlsplit(check_url(url)).scheme
    if scheme not in stores:
        known = ", ".join(f"{s}://" for s in sorted(stores)) or "(none)"
        raise RegistryError(
            f"no remote store handles {scheme}:// (remote {url}); available: {known}. "
            "Install the plugin that provides it, or use an s3:// or file:// URL"
        )
    return stores[scheme].open(url, endpoint_url)
