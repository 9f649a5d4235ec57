"""The file remote store (`file:///path`): a directory, typically on a file system several machines mount.

Reads and listings go through fsspec's local file system. The writes use the operating system directly,
because fsspec has no atomic form of them: a whole-object write is temp file + fsync + rename
(`files.write_atomic`); atomic create writes a temp file and hard-links it to the key (`link` fails if the
key exists, and is atomic on local file systems and on NFS); compare-and-swap holds a lock on a file beside the key
(`remote_locks.exclusive`: a POSIX record lock, which NFS forwards to its lock manager) while it compares and
renames. A writer killed meanwhile loses its lock with its process and leaves at most a temp file, which is
never listed.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from adapterhub_registry.files import TEMP_PREFIX, fsync_dir, temp_path, write_atomic, write_synced
from adapterhub_registry.remote_fsspec import FsspecStore
from adapterhub_registry.remote_locks import exclusive
from adapterhub_registry.remote_store import RemoteStoreError, RemoteStoreSpec

_LOCK_SUFFIX = ".lock"


class FileStore(FsspecStore):
    """A remote under a local or mounted directory."""

    def read_with_token(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = Path(self.path(key)).read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def put(self, key: str, data: bytes) -> None:
        target = self._prepared(key)
        write_atomic(target, data)

    def create(self, key: str, data: bytes) -> bool:
        target = self._prepared(key)
        temp = temp_path(target.parent)
        try:
            write_synced(temp, data)
            os.link(temp, target)  # fails if the target exists: create-if-absent
        except FileExistsError:
            return False
        except OSError as exc:
            raise RemoteStoreError(_advice(self.url, key, exc)) from exc
        finally:
            temp.unlink(missing_ok=True)
        fsync_dir(target.parent)
        return True

    def replace_if(self, key: str, data: bytes, token: str | None) -> bool:
        target = self._prepared(key)
        with exclusive(target.with_name(target.name + _LOCK_SUFFIX)):
            current = self.read_with_token(key)
            if (current[1] if current else None) != token:
                return False
            write_atomic(target, data)
            return True

    def hidden(self, path: str) -> bool:
        name = path.rpartition("/")[2]
        return name.startswith(TEMP_PREFIX) or name.endswith(_LOCK_SUFFIX)

    def _prepared(self, key: str) -> Path:
        target = Path(self.path(key))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RemoteStoreError(_advice(self.url, key, exc)) from exc
        return target


def _advice(url: str, key: str, exc: OSError) -> str:
    if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP) and "link" in str(exc).lower():
        return (
            f"remote {url}: the file system refuses hard links ({exc.strerror}), which the remote index needs "
            "for atomic creates; put the remote on a file system with hard links (ext4, xfs, NFS) or use s3://"
        )
    return f"remote {url}: cannot write {key}: {exc.strerror or exc}; check that the directory exists and is writable"


def open_file(url: str, endpoint_url: str | None) -> FileStore:
    """A `FileStore` for `file:///absolute/path` (the directory is created on first write)."""
    import fsspec

    if endpoint_url:
        raise RemoteStoreError(f"--endpoint-url is for s3:// remotes; {url} is a directory, drop the option")
    path = unquote(urlsplit(url).path)
    if not os.path.isabs(path):
        raise RemoteStoreError(f"{url!r}: a file remote needs an absolute path, e.g. file:///srv/adapters")
    return FileStore(url, fsspec.filesystem("file"), path)


FILE_STORE = RemoteStoreSpec("file", "a directory on a local or shared file system (NFS, ...)", open_file)
