"""Content-addressed blob store: `<root>/blobs/sha256/<hex>`, one file per distinct content.

Identical adapter files are stored once. Every read checks the bytes, so bit rot, truncation or a
hand-edited file is reported as a `CorruptBlobError` instead of reaching `safetensors` or PEFT. The store
knows nothing about names or versions; the index decides which blobs are referenced.

Two checks, for two different questions:

* sha256 is the content's identity (the blob's name). It is computed over the bytes on every push and
  import, and checked on every read whose bytes leave the registry (`pull`, `export-peft`) and by `verify`.
* xxh3-128 (`fast_checksum`) answers only "are these still the bytes that were pushed?" for local loads
  into memory (`Registry.load`, the adapter pool). sha256 of a 20 MB adapter takes 13-17 ms on one core of
  a small CPU, more than the whole 10 ms budget of a swap from the registry; xxh3-128 takes under 2 ms and
  catches any accidental damage (its 128 bits make a random collision out of reach). It is recorded at push
  time from the very bytes whose sha256 was computed, or, for blobs of older registries, after the first
  read whose sha256 matched. It is no defence against someone forging content: whoever can write the blob
  files can rewrite the index too, so that was never a local guarantee.

A local load is the hot path: a swap from the registry into an adapter-pool slot should take at most 10 ms
for a 20 MB adapter, and reading the file, checksumming it and parsing its safetensors header are each a
few ms. The read and the checksum release the GIL and the header parsing is Python, so `reading` runs them
side by side (a worker thread reads the rest and checksums while the caller parses the head), into one
uint8 tensor the caller keeps and views tensors from. The registry keeps each blob's checked layout after its
first load, so later loads of it have no head to parse: they ask for the whole file as the "head" and read and
checksum it in the calling thread (a thread start and hand-off cost more than they would overlap).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from adapterhub_registry.errors import CorruptBlobError
from adapterhub_registry.files import fsync_dir, stale_temp_files, write_atomic

if TYPE_CHECKING:  # imported by the reads that make tensors: listing and tagging never load torch
    import torch

_HEX = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20
_THREAD_MIN_BYTES = 1 << 20  # below this, starting a thread costs more than the read and checksum it would overlap


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def fast_checksum(data: bytes | memoryview) -> str:
    """xxh3-128 of `data` as hex: the integrity check of local loads (see the module docstring)."""
    return xxhash.xxh3_128_hexdigest(data)


@dataclass
class CheckedRead:
    """The blob's bytes (`buffer`, filled and checked once the `reading` block is left) and their xxh3-128."""

    buffer: torch.Tensor  # (size,) uint8
    checksum: str | None = None


class BlobStore:
    """Blobs under `directory`, each named by the sha256 of its content."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not _HEX.fullmatch(sha256):
            raise CorruptBlobError(
                f"{sha256!r} is not a sha256 hex digest; the index is damaged, run `adapterhub registry verify`"
            )
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
            raise _wrong_size(ref, path, len(data), size)
        actual = sha256_hex(data)
        if actual != sha256:
            raise CorruptBlobError(_message(ref, path, f"content hashes to {actual}, not {sha256}"))
        return data

    @contextmanager
    def reading(self, sha256: str, size: int, ref: str, checksum: str | None,
                head_size: Callable[[memoryview], int]) -> Iterator[CheckedRead]:  # fmt: skip
        """Read the blob into a new tensor, yielding once its head is in, and check it on leaving.

        `head_size(first 8 bytes)` says how many leading bytes the block parses; only those are filled when it
        starts. On leaving, the size and the xxh3-128 are checked against `size` and `checksum`; when `checksum`
        is None (no push recorded one) or differs, sha256 decides: a match means the recorded value was missing
        or wrong, and `read.checksum` is the right one to record; a mismatch is damage. Damage raises
        `CorruptBlobError` naming `ref`, in place of anything the block raised (a damaged header fails to parse).
        """
        path = self.path(sha256)
        try:
            handle = open(path, "rb", buffering=0)  # closed below, once the worker is done with it
        except FileNotFoundError:
            raise CorruptBlobError(_message(ref, path, "is missing")) from None
        with handle:
            found = os.fstat(handle.fileno()).st_size
            if found != size:
                raise _wrong_size(ref, path, found, size)
            import torch

            read = CheckedRead(torch.empty(size, dtype=torch.uint8))
            data = read.buffer.numpy().data
            first = _fill(handle, data[:8])
            head = first + _fill(handle, data[first : max(first, min(size, head_size(data[:first])))])
            rest = _Rest(handle, data, head)
            threaded = size - head >= _THREAD_MIN_BYTES
            rest.start() if threaded else rest.run()
            try:
                yield read
            finally:
                if threaded:
                    rest.join()
                read.checksum = _check(rest, data, path, sha256, size, ref, checksum)

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


class _Rest(threading.Thread):
    """Reads the bytes after the head and checksums the whole buffer; the GIL is free for both."""

    def __init__(self, handle: io.RawIOBase | io.BufferedIOBase, data: memoryview, head: int) -> None:
        super().__init__(name="adapterhub-blob-read", daemon=True)
        self.handle, self.data, self.head = handle, data, head
        self.length = head
        self.checksum = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.length += _fill(self.handle, self.data[self.head :])
            self.length += len(self.handle.read(1))  # the file grew while being read
            if self.length == len(self.data):
                self.checksum = fast_checksum(self.data)
        except BaseException as exc:  # handed to the caller's thread, which re-raises it
            self.error = exc


def _check(rest: _Rest, data: memoryview, path: Path, sha256: str, size: int, ref: str, checksum: str | None) -> str:
    """The verified xxh3-128 of the buffer; raises what the worker raised, or `CorruptBlobError` on damage."""
    if rest.error is not None:
        raise rest.error
    if rest.length != size:
        raise _wrong_size(ref, path, rest.length, size)
    if rest.checksum != checksum and (digest := sha256_hex(data)) != sha256:
        raise CorruptBlobError(_message(ref, path, f"content hashes to {digest}, not {sha256}"))
    return rest.checksum


def _fill(handle: io.RawIOBase | io.BufferedIOBase, data: memoryview) -> int:
    """Read into `data` until it is full or the file ends; the number of bytes read."""
    length = 0
    while length < len(data) and (count := handle.readinto(data[length:])):
        length += count
    return length


def _wrong_size(ref: str, path: Path, found: int, size: int) -> CorruptBlobError:
    return CorruptBlobError(_message(ref, path, f"has {found} bytes, expected {size} (truncated or overwritten)"))


def _message(ref: str, path: Path, what: str) -> str:
    return (
        f"adapter {ref}: blob {path} {what}. The stored adapter is damaged; "
        f"run `adapterhub registry verify` to see every affected ref, then `adapterhub registry delete {ref}` and push it "
        "again from a good copy"
    )
