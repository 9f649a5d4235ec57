"""A local copy of the immutable objects of a remote already read, so reading the remote again reads only new ones.

Entries, index snapshots (named by their sha256) and finished log objects of a remote are never rewritten
(remote_layout.py, remote_index.py), so a copy read once stays right: a listing downloads a snapshot once, and
a pending name re-read or a `gc`/`verify` pass reads only the entries not seen before. The copies live under
`<registry root>/remote-cache/<sha256 of the remote URL, 16 hex>/`, written atomically. `resolve` and `fetch`
read the entry from the remote every time, and a fetch re-checks the blob's sha256 against that fresh entry.
A remote deleted and rebuilt under the same URL with other contents could list stale entries: remove the cache
directory (it is only a cache).
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from adapterhub_registry.errors import RegistryError
from adapterhub_registry.files import write_atomic

CACHE_DIR = "remote-cache"


class EntryCache:
    """Copies of one remote's immutable objects, by key (`index/<name>/<version>.json`, `catalog/...`)."""

    def __init__(self, registry_root: Path, url: str) -> None:
        self.directory = registry_root / CACHE_DIR / hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        found = {}
        for key in keys:
            with contextlib.suppress(OSError):
                found[key] = (self.directory / key).read_bytes()
        return found

    def put_many(self, entries: dict[str, bytes]) -> None:
        """Keep copies; a cache that cannot be written (read-only disk) only means slower listings."""
        for key, data in entries.items():
            path = self.directory / key
            with contextlib.suppress(OSError, RegistryError):
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, data)
