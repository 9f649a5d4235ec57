"""`Registry`: the public face of the store — push, resolve, load, pull, export, list, tag, delete, verify.

It ties together the blob store (bytes, content-addressed and hash-checked), the SQLite index (names,
versions, tags, metadata) and the adapter-directory format. Ordering is what makes it crash-safe: a blob
is fully on disk before the index row that points at it is committed, and a blob is removed only after
no committed row points at it. Blob writes and removals happen while holding the index write lock, so a
concurrent `push` can never reuse a blob that a concurrent `delete` is removing.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub_registry.adapter_dir import (
    CONFIG_FILE,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    manifest_bytes,
    read_adapter_dir,
    write_files,
)
from adapterhub_registry.blobs import BlobStore, fast_checksum, sha256_hex
from adapterhub_registry.errors import (
    CorruptBlobError,
    DestinationExistsError,
    InvalidNameError,
    NotFoundError,
    RegistryError,
    UnsafeFileError,
)
from adapterhub_registry.index import Index
from adapterhub_registry.names import Ref, parse_ref, validate_name, validate_tag
from adapterhub_registry.paging import MetricFilter, PageQuery
from adapterhub_registry.records import AdapterRecord, VerifyReport
from adapterhub_registry.safetensors_check import TensorLayout, check_safetensors, checked_layout, header_size

if TYPE_CHECKING:  # torch is imported where tensors are made: listing and tagging never load it
    import torch

    from adapterhub_registry.remote import Remote
    from adapterhub_registry.remote_store import RemoteStoreSpec


_LAYOUTS_KEPT = 256  # blob layouts kept for loads (one per adapter a server swaps in; ~80 KB each for 420 tensors)


def default_root() -> Path:
    """`$ADAPTERHUB_HOME/registry`, else `$XDG_DATA_HOME/adapterhub/registry` (default ~/.local/share)."""
    home = os.environ.get("ADAPTERHUB_HOME")
    if home:
        return Path(home).expanduser() / "registry"
    data_home = os.environ.get("XDG_DATA_HOME")
    base = Path(data_home) if data_home and Path(data_home).is_absolute() else Path.home() / ".local" / "share"
    return base / "adapterhub" / "registry"


class Registry:
    """A registry rooted at `root`: `root/blobs/sha256/<hex>` plus `root/index.sqlite`."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser().absolute() if root is not None else default_root()
        try:
            self._blobs = BlobStore(self.root / "blobs" / "sha256")
        except OSError as exc:
            raise RegistryError(
                f"cannot create the registry at {self.root}: {exc.strerror}; pick a writable root"
            ) from exc
        self._index = Index(self.root / "index.sqlite")
        self._layouts: dict[str, TensorLayout] = {}  # blob sha256 -> its checked layout, newest last (see load_record)
        self._layouts_lock = threading.Lock()  # a server's threads load side by side
        # On a read-only root the leftovers stay until `verify --repair` runs where it can write.
        with contextlib.suppress(OSError):
            self._blobs.remove_stale_temp_files()

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the index connection (it reopens on next use)."""
        self._index.close()

    def push(
        self,
        name: str,
        adapter_dir: Path | str,
        *,
        method: str,
        base_fingerprint: str | None = None,
        manifest: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        tags: Sequence[str] = (),
    ) -> AdapterRecord:
        """Store the adapter in `adapter_dir` as the next version of `name`; `tags` then point at it.

        `manifest` is merged over the directory's adapterhub.json. Without `base_fingerprint`, the merged
        manifest's `base.fingerprint` is used when it has one.
        """
        validate_name(name)
        if isinstance(tags, str):
            raise InvalidNameError(f"tags must be a list of strings, e.g. [{tags!r}], not a single string")
        tag_list = list(dict.fromkeys(validate_tag(t) for t in tags))
        if not isinstance(method, str) or not method.strip():
            raise RegistryError("method must be a non-empty string naming the adapter method, e.g. 'lora'")
        for label, value in (("manifest", manifest), ("metrics", metrics)):
            if value is not None and not isinstance(value, dict):
                raise RegistryError(f"{label} must be a dict or None, got {type(value).__name__}")
        files = read_adapter_dir(Path(adapter_dir))
        check_safetensors(files.weights, str(files.weights_path))
        merged_manifest = {**files.manifest, **(manifest or {})}
        if base_fingerprint is None and isinstance(merged_manifest.get("base"), dict):
            base_fingerprint = merged_manifest["base"].get("fingerprint")
        if base_fingerprint is not None and not isinstance(base_fingerprint, str):
            raise RegistryError(f"base_fingerprint must be a string or None, got {type(base_fingerprint).__name__}")
        digest, checksum = sha256_hex(files.weights), fast_checksum(files.weights)
        created = False
        try:
            with self._index.write() as writer:
                created = self._blobs.store(files.weights, digest)
                writer.set_checksum(digest, checksum)
                version = writer.add_version(
                    name=name,
                    method=method,
                    base_fingerprint=base_fingerprint,
                    peft_config_text=files.config_text,
                    manifest=merged_manifest,
                    metrics=dict(metrics or {}),
                    blob_sha256=digest,
                    size_bytes=len(files.weights),
                    created_at=time.time(),
                )
                for tag in tag_list:
                    writer.set_tag(name, tag, version)
                return self._found(writer.find(Ref(name, version)), Ref(name, version))
        except Exception:
            if created:  # the transaction failed (e.g. disk full at COMMIT): do not leave the new blob behind
                self._remove_unreferenced({digest}, best_effort=True)
            raise

    def resolve(self, ref: str) -> AdapterRecord:
        """`name` (latest version), `name@3` or `name:tag` -> its record."""
        parsed = parse_ref(ref)
        return self._found(self._index.find(parsed), parsed)

    def load(self, ref: str) -> tuple[AdapterRecord, dict[str, torch.Tensor]]:
        """The record and its tensors, after checking the blob's xxh3-128 (sha256 if none is recorded yet).

        The tensors are views into one buffer holding the blob, read once from disk: nothing is copied
        after the read. The header is parsed while the rest is read and checksummed; see blobs.py for
        which check runs where.
        """
        return self.load_record(self.resolve(ref))

    def load_record(self, record: AdapterRecord) -> tuple[AdapterRecord, dict[str, torch.Tensor]]:
        """``load`` of a record already resolved (the pool resolves a ref once and keeps its exact key).

        A blob's header is parsed and checked on its first load only: blobs are content-addressed, so its layout
        is kept by sha256 (``_layouts``) and a later load reads the whole file at once (no header to parse while
        the rest arrives), makes the views from the kept layout and checksums the bytes as always, so damage
        anywhere, the header included, is still refused with ``CorruptBlobError``.
        """
        recorded = self._index.checksum(record.blob_sha256)
        layout = self._layouts.get(record.blob_sha256)
        size = record.size_bytes
        with self._deleted_meanwhile_is_not_found(record):
            with self._blobs.reading(record.blob_sha256, size, record.ref, recorded,
                                     (lambda first: size) if layout else header_size) as read:  # fmt: skip
                if layout is None:
                    try:
                        layout = checked_layout(read.buffer.numpy().data, f"blob {record.blob_sha256}")
                    except UnsafeFileError as exc:  # the bytes are as pushed (checked on leaving): it slipped past push
                        raise CorruptBlobError(
                            f"adapter {record.ref}: {exc}; the blob is not loadable, delete {record.ref} and push it again"
                        ) from exc
                tensors, pending = layout.tensors(read.buffer)
        for destination, source in pending:
            destination.copy_(source)
        self._remember_layout(record.blob_sha256, layout)
        if read.checksum is not None and read.checksum != recorded:
            self._index.remember_checksum(record.blob_sha256, read.checksum)
        return record, tensors

    def _remember_layout(self, sha256: str, layout: TensorLayout) -> None:
        """Keep ``layout`` (of a blob whose bytes just passed their checksum) for the next loads, bounded: a few
        hundred bytes per tensor, for the blobs loaded last."""
        with self._layouts_lock:
            self._layouts.pop(sha256, None)
            self._layouts[sha256] = layout
            while len(self._layouts) > _LAYOUTS_KEPT:
                del self._layouts[next(iter(self._layouts))]

    def pull(self, ref: str, dest_dir: Path | str) -> AdapterRecord:
        """Write the adapter directory (PEFT files + adapterhub.json with the record's fields) into `dest_dir`."""
        record = self.resolve(ref)
        weights = self.read_blob(record)
        sidecar = {
            **record.manifest,
            "name": record.name,
            "version": record.version,
            "method": record.method,
            "base_fingerprint": record.base_fingerprint,
            "metrics": record.metrics,
            "tags": list(record.tags),
        }
        write_files(
            Path(dest_dir),
            {
                CONFIG_FILE: self.peft_config_text(record).encode("utf-8"),
                WEIGHTS_FILE: weights,
                MANIFEST_FILE: manifest_bytes(sidecar),
            },
        )
        return record

    def export_peft(
        self, ref: str, dest_dir: Path | str, *, overwrite: bool = False, extra_files: dict[str, bytes] | None = None
    ) -> Path:
        """Write the two PEFT files, byte for byte as pushed, so `PeftModel.from_pretrained(dest_dir)` loads them,
        and `extra_files` (name -> bytes) beside them: what the caller knows that the registry does not (the
        adapterhub CLI adds a model card and the classifier's labels)."""
        record = self.resolve(ref)
        dest = Path(dest_dir)
        names = (CONFIG_FILE, WEIGHTS_FILE, *(extra_files or {}))
        existing = [str(dest / f) for f in names if (dest / f).exists() or (dest / f).is_symlink()]
        if existing and not overwrite:
            raise DestinationExistsError(
                f"{', '.join(existing)} already exist(s); choose an empty directory or pass overwrite=True", existing
            )
        weights = self.read_blob(record)
        # Temp file + rename replaces a symlink rather than following it, so nothing outside dest is written.
        files = {CONFIG_FILE: self.peft_config_text(record).encode("utf-8"), WEIGHTS_FILE: weights}
        write_files(dest, {**files, **(extra_files or {})})
        return dest

    def list(
        self,
        *,
        name: str | None = None,
        method: str | None = None,
        base_fingerprint: str | None = None,
        tag: str | None = None,
        all_versions: bool = False,
        limit: int | None = None,
    ) -> builtins.list[AdapterRecord]:
        """Records matching every given filter, sorted by name; only each name's newest match unless `all_versions`."""
        return self._index.query(
            name=None if name is None else validate_name(name),
            method=method,
            base_fingerprint=base_fingerprint,
            tag=None if tag is None else validate_tag(tag),
            all_versions=all_versions,
            limit=limit,
        )

    def search(self, query: str, *, limit: int | None = 50) -> builtins.list[AdapterRecord]:
        """Newest versions whose name, method, tags or manifest "description" contain `query` (case-insensitive)."""
        return self._index.search(query, limit)

    def page(
        self,
        query: str | None = None,
        *,
        tag: str | None = None,
        method: str | None = None,
        base: str | None = None,
        metrics: Sequence[MetricFilter | str] = (),
        sort: str = "-created",
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[builtins.list[AdapterRecord], int]:
        """One page of adapters (each name's newest version matching the filters) and how many names match.

        `query` matches as in `search`; `base` is a fingerprint or its prefix; `metrics` are filters such as
        `"accuracy>=0.7"`; `sort` is `-created` (default), `created`, `name`, `-name`, `metric:NAME` or
        `-metric:NAME` (versions without the metric last). Sorting and paging run in SQLite (see paging.py).
        """
        page = PageQuery(
            text=query or None,
            tag=None if tag is None else validate_tag(tag),
            method=method,
            base=base,
            metrics=tuple(m if isinstance(m, MetricFilter) else MetricFilter.parse(m) for m in metrics),
            sort=sort,
            offset=offset,
            limit=limit,
        )
        return self._index.page(page)

    def tag(self, ref: str, tag: str) -> AdapterRecord:
        """Point `tag` at the version `ref` resolves to (moving it if it pointed elsewhere)."""
        parsed, tag = parse_ref(ref), validate_tag(tag)
        with self._index.write() as writer:
            record = self._found(writer.find(parsed), parsed)
            writer.set_tag(record.name, tag, record.version)
            return self._found(writer.find(Ref(record.name, record.version)), parsed)

    def untag(self, name: str, tag: str) -> None:
        """Remove `tag` from `name`; the version it pointed at stays."""
        validate_name(name)
        validate_tag(tag)
        with self._index.write() as writer:
            if not writer.remove_tag(name, tag):
                raise NotFoundError(f"tag {name}:{tag} does not exist; {self._index.describe_name(name)}")

    def delete(self, ref: str) -> builtins.list[AdapterRecord]:
        """Delete all versions (`name`) or one (`name@v`, `name:tag`), then the blobs nothing refers to any more."""
        parsed = parse_ref(ref)
        with self._index.write() as writer:
            if parsed.version is None and parsed.tag is None:
                deleted = writer.versions_of(parsed.name)
            else:
                deleted = [record] if (record := writer.find(parsed)) else []
            if not deleted:
                raise NotFoundError(f"nothing to delete for {ref}: {self._index.describe_name(parsed.name)}")
            writer.delete(deleted)
        # A second transaction: rows are gone for good before their blobs are.
        self._remove_unreferenced({r.blob_sha256 for r in deleted})
        return deleted

    def set_metrics(self, ref: str, metrics: dict[str, Any]) -> AdapterRecord:
        """Merge `metrics` into the stored metrics of the version `ref` resolves to."""
        parsed = parse_ref(ref)
        if not isinstance(metrics, dict):
            raise RegistryError(f"metrics must be a dict such as {{'accuracy': 0.9}}, got {type(metrics).__name__}")
        with self._index.write() as writer:
            record = self._found(writer.find(parsed), parsed)
            writer.set_metrics(record.name, record.version, {**record.metrics, **metrics})
            return self._found(writer.find(Ref(record.name, record.version)), parsed)

    def verify(self, *, repair: bool = False) -> VerifyReport:
        """Re-hash every blob; report damaged refs, orphan blobs and stale temp files.

        `repair=True` removes orphans and temp files only. Damaged entries are reported, never dropped:
        deleting them is the user's decision (`delete`, then push a good copy).
        """
        on_disk = self._blobs.all_digests()
        usage = self._index.blob_usage()
        report = VerifyReport(checked=len(usage))
        problems: dict[str, str | None] = {}
        for ref, digest, size in usage:
            if digest not in problems:
                try:
                    problems[digest] = self._blobs.problem(digest, size)
                except CorruptBlobError as exc:
                    problems[digest] = str(exc)
            problem = problems[digest]
            if problem is None:
                report.ok.append(ref)
            else:
                report.corrupt.append((ref, problem))
        if report.corrupt:
            # A blob removed by a concurrent `delete` looks missing; only report refs that still use it.
            current = set(self._index.blob_usage())
            usage_by_ref = {ref: (digest, size) for ref, digest, size in usage}
            report.corrupt = [(ref, why) for ref, why in report.corrupt if (ref, *usage_by_ref[ref]) in current]
            report.checked = len(report.ok) + len(report.corrupt)
        if repair:
            with self._index.write() as writer:
                orphans = self._blobs.all_digests() - writer.referenced_digests()
                self._blobs.remove(orphans)
                writer.forget_checksums(orphans)
                report.temp_files = self._blobs.remove_stale_temp_files()
            report.repaired = True
        else:
            orphans = on_disk - {digest for _, digest, _ in usage}
            report.temp_files = self._blobs.stale_temp_files()
        report.orphans = sorted(self._blobs.path(d) for d in orphans)
        return report

    def remote(self, name: str, stores: dict[str, RemoteStoreSpec] | None = None) -> Remote:
        """The configured remote `name` (`remotes.json` in the root): push, fetch, list, search, tag.

        `stores` maps URL schemes to backends; None means the bundled S3 and file stores.
        """
        from adapterhub_registry.remote import open_remote

        return open_remote(self, name, stores)

    def _remove_unreferenced(self, digests: set[str], *, best_effort: bool = False) -> None:
        """Remove those of `digests` no committed row refers to; the write lock stops a concurrent push from
        re-using a blob while it is removed. `best_effort` leaves failures to `verify --repair`."""
        try:
            with self._index.write() as writer:
                unreferenced = digests - writer.referenced_digests()
                self._blobs.remove(unreferenced)
                writer.forget_checksums(unreferenced)
        except (RegistryError, OSError):
            if not best_effort:
                raise

    def read_blob(self, record: AdapterRecord) -> bytes:
        """The record's weights file (safetensors bytes), sha256-checked: for bytes that leave the registry (`pull`,
        `export_peft`, a remote push)."""
        with self._deleted_meanwhile_is_not_found(record):
            return self._blobs.read(record.blob_sha256, record.size_bytes, record.ref)

    def peft_config_text(self, record: AdapterRecord) -> str:
        """The record's `adapter_config.json`, exactly as it was pushed."""
        return self._index.peft_config_text(record)

    @contextlib.contextmanager
    def _deleted_meanwhile_is_not_found(self, record: AdapterRecord) -> Iterator[None]:
        """A blob that vanished because the entry was deleted meanwhile is reported as not found (the entry
        is gone), not as damage."""
        try:
            yield
        except CorruptBlobError:
            current = self._index.find(Ref(record.name, record.version))
            if current is None or current.blob_sha256 != record.blob_sha256:
                raise NotFoundError(
                    f"adapter {record.ref} was deleted by another process while it was being read; "
                    f"{self._index.describe_name(record.name)}"
                ) from None
            raise

    def _found(self, record: AdapterRecord | None, ref: Ref) -> AdapterRecord:
        if record is None:
            raise NotFoundError(f"adapter {ref} not found: {self._index.describe_name(ref.name)}")
        return record
