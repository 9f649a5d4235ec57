"""The S3 remote store (`s3://bucket/prefix`): s3fs for the I/O, S3's conditional writes for the index.

Credentials, region and endpoint come from the standard AWS settings (environment variables such as
`AWS_ACCESS_KEY_ID` and `AWS_ENDPOINT_URL`, `~/.aws/config`, instance roles), read by botocore itself; a
remote's own `--endpoint-url` wins over them, so MinIO, Ceph or any S3-compatible store works.

Atomic create is a PUT with `If-None-Match: *` (S3 since August 2024): of two concurrent creators, one gets
412 Precondition Failed. Compare-and-swap is a PUT with `If-Match: <ETag>` (S3 since November 2024). s3fs
passes both through `pipe_file` (`mode="create"`, or `IfMatch=` forwarded to PutObject). Reading an object
together with the ETag of exactly those bytes is one GetObject; s3fs returns either the bytes (`cat_file`) or
the ETag (`info`), never both from one request, so `read_with_token` calls the aiobotocore client underneath.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from adapterhub_registry.remote_fsspec import FsspecStore
from adapterhub_registry.remote_store import RemoteStoreError, RemoteStoreSpec

T = TypeVar("T")
_CONFLICT_RETRIES = 8  # 409 ConditionalRequestConflict: another conditional write to the key is in flight


class S3Store(FsspecStore):
    """A remote under `s3://bucket/prefix`."""

    def read(self, key: str) -> bytes:
        return self._call(lambda: super(S3Store, self).read(key), key)

    def size(self, key: str) -> int | None:
        return self._call(lambda: super(S3Store, self).size(key), key)

    def list(self, prefix: str) -> list[str]:
        return self._call(lambda: super(S3Store, self).list(prefix), prefix)

    def stat(self, key: str) -> tuple[int, float] | None:
        return self._call(lambda: super(S3Store, self).stat(key), key)

    def modified(self, prefix: str) -> dict[str, float]:
        return self._call(lambda: super(S3Store, self).modified(prefix), prefix)

    def delete(self, key: str) -> None:
        self._call(lambda: super(S3Store, self).delete(key), key)

    def list_after(self, prefix: str, after: str) -> builtins.list[str]:
        # fsspec's `find` always lists from the prefix's start; the index's log is read from a key on
        # (remote_index.py), so this is ListObjectsV2 with StartAfter, paged, on the client underneath.
        from fsspec.asyn import sync

        bucket, _, base = self.path(prefix).partition("/")
        start = len(self.root) - len(bucket)  # S3 keys are `<prefix>/<our key>`; ours start after that

        async def pages() -> builtins.list[str]:
            keys: builtins.list[str] = []
            token: str | None = None
            while True:
                extra = {"ContinuationToken": token} if token else {"StartAfter": self.path(after)[len(bucket) + 1 :]}
                page = await self.fs._call_s3("list_objects_v2", Bucket=bucket, Prefix=base, **extra)
                keys += [item["Key"][start:] for item in page.get("Contents", [])]
                if not page.get("IsTruncated"):
                    return keys
                token = page["NextContinuationToken"]

        return self._call(lambda: sync(self.fs.loop, pages), prefix)

    def holds(self, key: str, data: bytes) -> bool:
        # A single-part upload's ETag is the MD5 of its bytes (S3 and S3-compatible stores), so one HEAD tells
        # whether the object holds `data` without downloading it; a multipart ETag ("...-N") is not, so read.
        import hashlib

        try:
            etag = self._call(lambda: self.fs.info(self.path(key)), key).get("ETag", "").strip('"')
        except FileNotFoundError:
            return False
        if etag and "-" not in etag:
            return etag == hashlib.md5(data, usedforsecurity=False).hexdigest()
        return super().holds(key, data)

    def read_many(self, keys: builtins.list[str]) -> dict[str, bytes]:
        # Index entries are small: max_concurrency=1 makes s3fs send one GET each, not a HEAD first (for its
        # ranged parallel download of large objects); the GETs of all keys still run concurrently.
        start = len(self.root) + 1
        paths = [self.path(k) for k in keys]
        found = self._call(
            lambda: self.fs.cat(paths, on_error="omit", max_concurrency=1) if paths else {}, "index entries"
        )
        return {path[start:]: data for path, data in found.items()}

    def read_with_token(self, key: str) -> tuple[bytes, str] | None:
        from fsspec.asyn import sync

        bucket, _, name = self.path(key).partition("/")

        async def get() -> tuple[bytes, str]:
            response = await self.fs._call_s3("get_object", Bucket=bucket, Key=name)
            try:
                return await response["Body"].read(), response["ETag"]
            finally:
                response["Body"].close()

        try:
            return self._call(lambda: sync(self.fs.loop, get), key)
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        # One PutObject (or, past 100 MB, a multipart upload that becomes visible only when completed).
        self._call(lambda: self.fs.pipe_file(self.path(key), data), key)

    def create(self, key: str, data: bytes) -> bool:
        try:
            self._conditional(lambda: self.fs.pipe_file(self.path(key), data, mode="create"), key)
        except FileExistsError:  # s3fs's name for 412 on If-None-Match
            return False
        return True

    def replace_if(self, key: str, data: bytes, token: str | None) -> bool:
        if token is None:
            return self.create(key, data)
        try:
            self._conditional(lambda: self.fs.pipe_file(self.path(key), data, IfMatch=token), key)
        except FileNotFoundError:  # deleted since it was read: the token no longer holds
            return False
        except OSError as exc:
            if _code(exc) == "PreconditionFailed":
                return False
            raise
        return True

    def _conditional(self, write: Callable[[], object], key: str) -> None:
        for attempt in range(_CONFLICT_RETRIES):
            try:
                self._call(write, key)
                return
            except RemoteStoreError as exc:
                if _code(exc.__cause__) != "ConditionalRequestConflict" or attempt == _CONFLICT_RETRIES - 1:
                    raise
            time.sleep(0.05 * 2**attempt)

    def _call(self, operation: Callable[[], T], key: str) -> T:
        """Run one s3fs call; failures other than a missing or existing key become `RemoteStoreError`."""
        from botocore.exceptions import BotoCoreError

        try:
            return operation()
        except (FileNotFoundError, FileExistsError) as exc:
            if _code(exc) == "NoSuchBucket" or "bucket does not exist" in str(exc).lower():
                raise RemoteStoreError(
                    f"remote {self.url}: the bucket does not exist; create it (aws s3 mb s3://{self.root.split('/')[0]}) "
                    "or fix the remote's URL (adapterhub registry remote add NAME s3://bucket/prefix)"
                ) from exc
            raise
        except OSError as exc:
            if _code(exc) == "PreconditionFailed":
                raise
            raise RemoteStoreError(_advice(self.url, key, exc)) from exc
        except BotoCoreError as exc:  # no credentials, endpoint unreachable, ...
            raise RemoteStoreError(_advice(self.url, key, exc)) from exc


def _code(exc: BaseException | None) -> str | None:
    """The S3 error code behind an exception s3fs translated (its cause is botocore's ClientError)."""
    while exc is not None:
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            return response.get("Error", {}).get("Code")
        exc = exc.__cause__
    return None


def _advice(url: str, key: str, exc: BaseException) -> str:
    return (
        f"remote {url}: request for {key} failed: {exc}. Check the credentials (AWS_ACCESS_KEY_ID / "
        "AWS_SECRET_ACCESS_KEY or ~/.aws), the endpoint (AWS_ENDPOINT_URL, or --endpoint-url on `adapterhub registry remote add`) "
        "and that the bucket exists and is reachable"
    )


def open_s3(url: str, endpoint_url: str | None) -> S3Store:
    """An `S3Store` for `s3://bucket/prefix`; `endpoint_url` None leaves the endpoint to botocore's settings."""
    import s3fs

    parts = urlsplit(url)
    if not parts.netloc:
        raise RemoteStoreError(f"{url!r} names no bucket; write s3://bucket/prefix")
    client_kwargs = {"endpoint_url": endpoint_url} if endpoint_url else {}
    # No listings cache: other machines write the index, and a cached listing would hide their versions. The
    # instance itself is cached by fsspec (per process), so opening a remote again reuses its client.
    fs = s3fs.S3FileSystem(use_listings_cache=False, **client_kwargs)
    return S3Store(url, fs, f"{parts.netloc}/{parts.path.strip('/')}".rstrip("/"))


S3_STORE = RemoteStoreSpec("s3", "S3 and S3-compatible object stores (MinIO, Ceph, ...), through s3fs", open_s3)
