"""The reading half of a remote store, through fsspec: what every bundled backend does the same way.

fsspec already gives one API over S3 and local disks (and GCS, Azure, ... through their packages), so reads,
listings and plain whole-object writes go through it. The conditional writes are not part of fsspec's API
(its local `pipe_file(mode="create")` checks then writes, which two writers can both pass), so each backend
module implements `create` and `replace_if` with its store's own atomic operation.
"""

from __future__ import annotations

import builtins
from datetime import datetime

from adapterhub_registry.remote_store import RemoteStore


class FsspecStore(RemoteStore):
    """Keys of a `RemoteStore` mapped to paths under `root` on an fsspec file system `fs`."""

    def __init__(self, url: str, fs, root: str) -> None:
        self.url, self.fs, self.root = url, fs, root.rstrip("/")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def read(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

    def size(self, key: str) -> int | None:
        try:
            return int(self.fs.info(self.path(key))["size"])
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[str]:
        start = len(self.root) + 1
        try:
            paths = self.fs.find(self.path(prefix))
        except FileNotFoundError:
            return []
        return sorted(p[start:] for p in paths if not self.hidden(p))

    def stat(self, key: str) -> tuple[int, float] | None:
        try:
            info = self.fs.info(self.path(key))
        except FileNotFoundError:
            return None
        return int(info["size"]), _timestamp(info)

    def modified(self, prefix: str) -> dict[str, float]:
        start = len(self.root) + 1
        try:
            found = self.fs.find(self.path(prefix), detail=True)
        except FileNotFoundError:
            return {}
        return {path[start:]: _timestamp(info) for path, info in found.items() if not self.hidden(path)}

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self.path(key))
        except FileNotFoundError:
            return

    def read_many(self, keys: builtins.list[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        found = self.fs.cat([self.path(k) for k in keys], on_error="omit")
        start = len(self.root) + 1  # fs.cat names each result by the path it was given
        return {path[start:]: data for path, data in found.items()}

    def hidden(self, path: str) -> bool:
        """True for a path that is the store's own bookkeeping, not an object (e.g. a temp file)."""
        return False


def _timestamp(info: dict) -> float:
    """When an object was last written, from what fsspec's `find(detail=True)` says: local file systems give
    `mtime` (seconds), S3 gives `LastModified` (a datetime)."""
    if "mtime" in info:
        return float(info["mtime"])
    stamp = info["LastModified"]
    return stamp.timestamp() if isinstance(stamp, datetime) else float(stamp)
