"""Crash-safe file writes: temp file in the target directory, write, fsync, rename, fsync the directory.

A reader (or a process restarted after a crash) therefore sees either the old file or the complete new
one. Temp files are named `.tmp-<pid>-<random>` so a later process can tell a crashed writer's leftovers
(dead pid, or simply old) from a write that is still in progress in another process.
"""

from __future__ import annotations

import errno
import os
import secrets
import time
from pathlib import Path

from adapterhub_registry.errors import RegistryError

TEMP_PREFIX = ".tmp-"
_STALE_AFTER_S = 3600.0  # a temp file this old is abandoned even if its pid was reused


def temp_path(directory: Path) -> Path:
    """A new temp file name in ``directory`` (``.tmp-<pid>-<random>``: see the module docstring)."""
    return directory / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"


def write_synced(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist) holding ``data``, flushed to the disk before returning."""
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` holds either its old content or all of `data`."""
    directory = path.parent
    temp = temp_path(directory)
    try:
        write_synced(temp, data)
        os.replace(temp, path)
        fsync_dir(directory)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise RegistryError(f"could not write {path}: {_advice(exc)}") from exc


def fsync_path(path: Path) -> None:
    """Flush a file's data (or a directory's renames) to disk, so a rename never exposes an empty file; errors
    (a full disk) are raised, unlike ``fsync_dir``'s best effort."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def stale_temp_files(directory: Path) -> list[Path]:
    """Temp files in `directory` left behind by writers that crashed or were killed."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX) and _is_stale(p))


def _is_stale(path: Path) -> bool:
    pid_text = path.name[len(TEMP_PREFIX) :].partition("-")[0]
    try:
        if time.time() - path.stat().st_mtime > _STALE_AFTER_S:
            return True
    except FileNotFoundError:
        return False  # its writer just renamed or removed it
    if not pid_text.isdigit():
        return True
    return not _pid_alive(int(pid_text))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:
        return True  # e.g. PermissionError: the process exists but belongs to another user
    return True


def _advice(exc: OSError) -> str:
    """Turn an OSError into a sentence that says what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full (or over quota); free some space and try again"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied or read-only file system ({exc.strerror}); check the directory's permissions"
    return f"{exc.strerror or exc}; check the disk and the directory, then try again"
