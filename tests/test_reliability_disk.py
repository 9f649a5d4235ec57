"""A full disk or a read-only root gives a clear error and leaves the registry (and a saved adapter) as it was.

Real small file systems are used where this process may mount a tmpfs (root in a container); the same
failures are also injected by patching, so the behaviour is checked everywhere.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import subprocess
from pathlib import Path

import peft.peft_model
import pytest
from stress.registry_stress import make_adapters
from test_registry_support import adapter, blob_files, registry, write_adapter  # noqa: F401  (fixtures)

from adapterhub import adapters
from adapterhub.base import load_base
from adapterhub.errors import AdapterHubError
from adapterhub_registry import Registry, RegistryError
from adapterhub_registry import files as files_module


def _state(registry: Registry) -> tuple:
    """Everything a failed write must leave unchanged: rows, tags, metrics, blob files and their bytes."""
    rows = [(r.to_dict()) for r in registry.list(all_versions=True)]
    blobs = {p.name: p.read_bytes() for p in (registry.root / "blobs" / "sha256").iterdir()}
    return rows, blobs


@pytest.fixture
def small_disk(tmp_path):
    """`small_disk("256k")` mounts a tmpfs of that size and returns its path; skipped where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("mounting a small tmpfs needs root; the patched variants below still run")
        point = tmp_path / f"disk-{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.mark.integration
def test_push_onto_a_full_disk_fails_clearly_and_changes_nothing(small_disk, tmp_path):
    disk = small_disk("256k")
    small, big = (
        make_adapters(tmp_path / "adapters", 8)[0],
        make_adapters(tmp_path / "adapters", 8)[7],
    )  # 4 KiB, 272 KiB
    with Registry(disk / "registry") as registry:
        registry.push("a", small, method="lora", tags=["best"])
        before = _state(registry)
        with pytest.raises(RegistryError, match="disk is full.*free some space"):
            registry.push("a", big, method="lora", tags=["best"])
        assert _state(registry) == before
        assert list((disk / "registry" / "blobs" / "sha256").glob(".tmp-*")) == []
        assert registry.verify().ok_all


@pytest.mark.integration
def test_disk_filling_up_before_the_index_commits_leaves_no_entry_and_no_orphan_blob(small_disk, tmp_path, monkeypatch):
    disk = small_disk("1m")
    with Registry(disk / "registry") as registry:
        registry.push("a", write_adapter(tmp_path / "a", seed=1), method="lora")
        before = _state(registry)
        store = registry._blobs.store

        def store_then_fill_the_disk(data, digest):
            created = store(data, digest)
            fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)  # take every byte left, as another program might
            try:
                while os.write(fd, bytes(4096)):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
            finally:
                os.close(fd)
            return created

        monkeypatch.setattr(registry._blobs, "store", store_then_fill_the_disk)
        big_manifest = {"description": "x" * 200_000}  # the index must grow to record it
        with pytest.raises(RegistryError, match="full"):
            registry.push("a", write_adapter(tmp_path / "b", seed=2), method="lora", manifest=big_manifest)
        monkeypatch.undo()
        (disk / "filler").unlink()
        assert _state(registry) == before
        assert registry.verify().ok_all
        assert registry.push("a", write_adapter(tmp_path / "b", seed=2), method="lora").version == 2


def test_index_full_gives_a_clear_error_and_removes_the_new_blob(registry, adapter, tmp_path):
    registry.push("a", adapter, method="lora")
    before = _state(registry)
    conn = registry._index._conn
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite answers SQLITE_FULL, as on a full disk
    with pytest.raises(RegistryError, match="disk is full"):
        registry.push(
            "a", write_adapter(tmp_path / "v2", seed=7), method="lora", manifest={"description": "y" * 50_000}
        )
    assert _state(registry) == before
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert registry.push("a", write_adapter(tmp_path / "v2", seed=7), method="lora").version == 2


@pytest.mark.integration
def test_read_only_root_gives_a_clear_error_and_leaves_the_registry_intact(small_disk, adapter):
    disk = small_disk("1m")
    root = disk / "registry"
    with Registry(root) as registry:
        registry.push("a", adapter, method="lora", tags=["best"])
        before = _state(registry)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    try:
        with pytest.raises(RegistryError, match="registry index .*writable"):
            Registry(root)
        with pytest.raises(RegistryError, match="Read-only file system; pick a writable root"):
            Registry(disk / "new-registry")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
    with Registry(root) as registry:
        assert _state(registry) == before and registry.verify().ok_all


def test_read_only_blob_directory_fails_the_push_clearly(registry, adapter, tmp_path, monkeypatch):
    registry.push("a", adapter, method="lora")
    before = _state(registry)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files_module, "open", read_only, raising=False)
    with pytest.raises(RegistryError, match="read-only file system"):
        registry.push("a", write_adapter(tmp_path / "v2", seed=3), method="lora")
    monkeypatch.undo()
    assert _state(registry) == before


@pytest.mark.integration
def test_export_onto_a_full_disk_leaves_no_partial_file(small_disk, tmp_path):
    big = make_adapters(tmp_path / "adapters", 8)[7]
    disk = small_disk("128k")
    with Registry(tmp_path / "registry") as registry:
        registry.push("big", big, method="lora")
        with pytest.raises(RegistryError, match="disk is full"):
            registry.export_peft("big", disk / "export")
        with pytest.raises(RegistryError, match="disk is full"):
            registry.pull("big", disk / "pulled")
    assert not (disk / "export" / "adapter_model.safetensors").exists()
    assert not (disk / "pulled" / "adapter_model.safetensors").exists()
    assert [p.name for p in (disk / "export").iterdir() if p.name.startswith(".tmp-")] == []


@pytest.fixture
def tiny_lora(tiny_llama):
    base = load_base(tiny_llama)
    model = adapters.attach(base, "lora")
    return model, adapters.build_manifest(base, "lora", adapters.make_options("lora"))


def _listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()} if directory.exists() else {}


@pytest.mark.integration
def test_save_adapter_on_a_full_disk_leaves_no_half_file(small_disk, tiny_lora):
    model, manifest = tiny_lora
    disk = small_disk("16k")  # the weights alone are ~70 KB
    with pytest.raises(AdapterHubError, match="could not save the adapter.*No space left on device"):
        adapters.save_adapter(model, disk / "adapter", manifest)
    assert _listing(disk / "adapter") == {}  # no weights, no config, no .saving-* staging directory


def test_save_adapter_failing_midway_keeps_the_previous_adapter_whole(tiny_lora, tmp_path, monkeypatch):
    model, manifest = tiny_lora
    adapters.save_adapter(model, tmp_path / "adapter", manifest)
    before = _listing(tmp_path / "adapter")

    def half_then_full(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a safetensors file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(peft.peft_model, "safe_save_file", half_then_full)
    with pytest.raises(AdapterHubError, match="No space left on device"):
        adapters.save_adapter(model, tmp_path / "adapter", dataclasses.replace(manifest, extra={"changed": True}))
    assert _listing(tmp_path / "adapter") == before
