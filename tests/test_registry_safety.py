"""Behaviour under bad input, damaged storage, crashes and concurrent writers."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import struct
from pathlib import Path

import pytest
from test_registry_support import LORA_CONFIG, adapter, blob_files, registry, write_adapter  # noqa: F401  (fixtures)

from adapterhub_registry import CorruptBlobError, InvalidNameError, Registry, RegistryError, UnsafeFileError

BAD_NAMES = ["a/b", "a\\b", "..", "a..b", "x\x00y", "/abs/path", "", "-lead", "sp ace", "a:b", "x" * 129]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_push_refuses_invalid_names_and_tags(registry, adapter, bad):
    with pytest.raises(InvalidNameError, match="A-Z a-z 0-9"):
        registry.push(bad, adapter, method="lora")
    with pytest.raises(InvalidNameError):
        registry.push("ok", adapter, method="lora", tags=[bad])
    assert registry.list() == [] and blob_files(registry) == []


@pytest.mark.parametrize("ref", ["a@0", "a@-1", "a@x", "a@", "../a", "a:", "a:../b"])
def test_resolve_refuses_malformed_refs(registry, ref):
    with pytest.raises(InvalidNameError):
        registry.resolve(ref)


def test_push_refuses_a_pickle_only_directory(registry, tmp_path):
    directory = tmp_path / "pickled"
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps(LORA_CONFIG))
    (directory / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UnsafeFileError, match="pickle files are refused; convert with safetensors"):
        registry.push("a", directory, method="lora")


def test_push_refuses_a_config_that_is_not_peft(registry, adapter):
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4}))
    with pytest.raises(RegistryError, match="peft_type"):
        registry.push("a", adapter, method="lora")


def _safetensors(header: dict, data: bytes, declared_length: int | None = None) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded) if declared_length is None else declared_length) + encoded + data


MALFORMED = {
    "shape disagrees with offsets": (
        _safetensors({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}, bytes(12)),
        "needs 16",
    ),
    "unknown dtype": (
        _safetensors({"w": {"dtype": "F13", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
        "unknown dtype",
    ),
    "header length beyond file": (
        _safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4), 10**6),
        "beyond the file",
    ),
    "header not json": (struct.pack("<Q", 5) + b"{nope" + bytes(4), "not valid UTF-8 JSON"),
    "overlapping tensors": (
        _safetensors(
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            bytes(12),
        ),
        "overlaps",
    ),
    "offsets beyond the file": (
        _safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)),
        "only has 8",
    ),
    "trailing garbage": (
        _safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(8)),
        "trailing garbage",
    ),
    "too short": (b"\x01\x00", "too short"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_push_refuses_malformed_safetensors(registry, adapter, case):
    content, message = MALFORMED[case]
    (adapter / "adapter_model.safetensors").write_bytes(content)
    with pytest.raises(UnsafeFileError, match=message) as raised:
        registry.push("a", adapter, method="lora")
    assert "adapter_model.safetensors" in str(raised.value)
    assert registry.list() == [] and blob_files(registry) == []


def _damage(registry: Registry, ref: str, how: str) -> Path:
    blob = registry.root / "blobs" / "sha256" / registry.resolve(ref).blob_sha256
    data = bytearray(blob.read_bytes())
    if how == "flip":
        data[-1] ^= 0xFF
    blob.write_bytes(bytes(data if how == "flip" else data[: len(data) // 2]))
    return blob


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_load_and_pull_of_a_damaged_blob_raise_corrupt_blob_error(registry, adapter, tmp_path, how):
    registry.push("a", adapter, method="lora")
    blob = _damage(registry, "a@1", how)
    with pytest.raises(CorruptBlobError, match=f"a@1.*{blob.name}"):
        registry.load("a")
    with pytest.raises(CorruptBlobError, match="a@1"):
        registry.pull("a@1", tmp_path / "out")
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_load_of_a_missing_blob_raises_corrupt_blob_error(registry, adapter):
    record = registry.push("a", adapter, method="lora")
    (registry.root / "blobs" / "sha256" / record.blob_sha256).unlink()
    with pytest.raises(CorruptBlobError, match="is missing"):
        registry.load("a")


def test_verify_names_every_ref_using_a_flipped_or_truncated_blob(registry, adapter, tmp_path):
    registry.push("a", adapter, method="lora")
    registry.push("b", adapter, method="lora")  # shares a@1's blob
    registry.push("c", write_adapter(tmp_path / "c", seed=3), method="lora")
    registry.push("d", write_adapter(tmp_path / "d", seed=4), method="lora")
    _damage(registry, "a@1", "flip")
    _damage(registry, "c@1", "truncate")
    report = registry.verify()
    assert report.checked == 4 and report.ok == ["d@1"] and not report.ok_all
    reasons = dict(report.corrupt)
    assert reasons.keys() == {"a@1", "b@1", "c@1"}
    assert "hashes to" in reasons["a@1"] and "truncated" in reasons["c@1"]
    assert json.loads(json.dumps(report.to_dict()))["ok_all"] is False


def test_verify_repair_removes_orphans_and_temp_files_but_keeps_corrupt_entries(registry, adapter):
    registry.push("a", adapter, method="lora")
    _damage(registry, "a@1", "flip")
    orphan = registry.root / "blobs" / "sha256" / ("0" * 64)
    orphan.write_bytes(b"left over")
    temp = registry.root / "blobs" / "sha256" / ".tmp-4194305-deadbeef"
    temp.write_bytes(b"half written")
    report = registry.verify()
    assert report.orphans == [orphan] and report.temp_files == [temp] and not report.repaired
    repaired = registry.verify(repair=True)
    assert repaired.repaired and not orphan.exists() and not temp.exists()
    assert [ref for ref, _ in repaired.corrupt] == ["a@1"]
    assert registry.resolve("a@1")  # the damaged entry is reported, never dropped


def test_opening_a_registry_removes_a_crashed_writers_temp_file(tmp_path):
    Registry(tmp_path / "reg").close()
    leftover = tmp_path / "reg" / "blobs" / "sha256" / ".tmp-4194305-0123abcd"  # pid above Linux's pid_max
    leftover.write_bytes(b"partial blob")
    live = tmp_path / "reg" / "blobs" / "sha256" / f".tmp-{os.getpid()}-0123abcd"
    live.write_bytes(b"being written right now")
    Registry(tmp_path / "reg").close()
    assert not leftover.exists()
    assert live.exists()


def test_push_that_fails_when_the_disk_is_full_leaves_the_registry_as_it_was(registry, adapter, tmp_path, monkeypatch):
    registry.push("a", adapter, method="lora", tags=["best"])
    before = (registry.list(all_versions=True), blob_files(registry))

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(RegistryError, match="disk is full.*free some space"):
        registry.push("a", write_adapter(tmp_path / "v2", seed=9), method="lora", tags=["best"])
    monkeypatch.undo()
    assert (registry.list(all_versions=True), blob_files(registry)) == before
    assert list((registry.root / "blobs" / "sha256").glob(".tmp-*")) == []
    assert registry.push("a", write_adapter(tmp_path / "v2", seed=9), method="lora").version == 2


def _push_many(root: str, adapter_dir: str, count: int) -> None:
    registry = Registry(root)
    for _ in range(count):
        registry.push("shared", adapter_dir, method="lora", tags=["latest"])
    registry.close()


@pytest.mark.integration
def test_concurrent_writer_processes_get_distinct_versions(tmp_path, adapter):
    root = tmp_path / "reg"
    Registry(root).close()
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_push_many, args=(str(root), str(adapter), 5)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        if worker.is_alive():
            worker.kill()
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    records = Registry(root).list(all_versions=True)
    assert [r.version for r in records] == list(range(1, 21))
    assert len({r.blob_sha256 for r in records}) == 1
