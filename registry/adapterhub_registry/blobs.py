"""Content-addressed blob store: `<root>/blobs/sha256/<hex>`, one file per distinct content.

Identical adapter files are stored once. Every read re-hashes the bytes, so bit rot, truncation or a
hand-edited file is reported as a `CorruptBlobError` instead of reaching `safetensors` or PEFT. The store
knows nothing about names or versions; the index decides which blobs are referenced.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from adapterhub_registry.errors import CorruptBlobError
from adapterhub_registry.files import fsync_dir, stale_temp_files, write_atomic

_HEX = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    """Blobs under `directory`, each named by the sha256 of its content."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not _HEX.fullmatch(sha256):
            raise CorruptBlobError(f"{sha256!r} is not a sha256 hex digest; the index is damaged, run `verify`")
        return self.directory / sha256

    def store(self, data: bytes, sha256: str) -> bool:
        """Write `data` under `sha256` unless an intact copy is already there (a damaged copy is replaced).

        Returns True when the blob file did not exist before, so a caller whose transaction then fails
        can remove it again instead of leaving an orphan.
        """
        path = self.path(sha256)
        existed = path.is_file()
        if existed and self.problem(sha256, len(data)) is None:
            return False
        write_atomic(path, data)
        return not existed

    def read(self, sha256: str, size: int, ref: str) -> bytes:
        """Return the blob's bytes after checking size and sha256; `ref` names the adapter in the error."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptBlobError(_message(ref, path, "is missing")) from None
        if len(data) != size:
            what = f"has {len(data)} bytes, expected {size} (truncated or overwritten)"
            raise CorruptBlobError(_message(ref, path, what))
        actual = sha256_hex(data)
        if actual != sha256:
            raise CorruptBlobError(_message(ref, path, f"content hashes to {actual}, not {sha256}"))
        return data

    def problem(self, sha256: str, size: int) -> str | None:
        """Why the blob is not intact (missing, wrong size, wrong hash), or None if it is; streams the file."""
        path = self.path(sha256)
        digest = hashlib.sha256()
        length = 0
        try:
            with open(path, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
                    length += len(chunk)
        except FileNotFoundError:
            return f"blob {sha256} is missing"
        if length != size:
            return f"blob {sha256} has {length} bytes, expected {size} (truncated or overwritten)"
        if digest.hexdigest() != sha256:
            return f"blob {sha256} content hashes to {digest.hexdigest()}"
        return None

    def all_digests(self) -> set[str]:
        """The sha256 of every blob file present (temp files excluded)."""
        return {p.name for p in self.directory.iterdir() if _HEX.fullmatch(p.name)}

    def remove(self, digests: set[str]) -> None:
        for sha256 in digests:
            self.path(sha256).unlink(missing_ok=True)
        if digests:
            fsync_dir(self.directory)

    def stale_temp_files(self) -> list[Path]:
        return stale_temp_files(self.directory)

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete leftovers of crashed writers; returns what was removed."""
        removed = self.stale_temp_files()
        for path in removed:
            path.unlink(missing_ok=True)
        return removed


def _message(ref: str, path: Path, what: str) -> str:
    return (
        f"adapter {ref}: blob {path} {what}. The stored adapter is damaged; "
        f"run `verify` to see every affected ref, then delete {ref} and push it again from a good copy"
    )
