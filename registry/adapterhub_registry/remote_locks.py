"""An exclusive lock on a file path that holds across processes *and* across threads of one process.

POSIX record locks (`lockf`) are what NFS forwards to its lock manager, so they are the ones that hold
between machines on a shared file system; but they belong to the process, so two threads of one process
would both "hold" the same one. A per-path thread lock in front of it closes that gap. The lock file is
kept (removing it would let a waiter lock an unlinked file while a newcomer locks a new one).
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator
from pathlib import Path

_THREAD_LOCKS: dict[str, threading.Lock] = {}
_GUARD = threading.Lock()


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold the lock on `lock_path` (created if absent) for the duration of the block."""
    key = str(lock_path.absolute())
    with _GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(key, threading.Lock())
    with thread_lock, open(lock_path, "a+b") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)
