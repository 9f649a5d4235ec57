"""Local loads check a blob by the xxh3-128 recorded at push, not its sha256, and still catch any damage;
registries written before that checksum existed keep loading and get it on their first verified load.

sha256 stays the identity: it names the blob, `pull`/`export-peft`/`verify` check it (see
test_reliability_corruption.py), and it decides whenever the fast checksum is missing or disagrees.
"""

from __future__ import annotations

import json
import sqlite3
import struct

import pytest
import torch
import xxhash
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from test_registry_support import adapter, registry, write_adapter  # noqa: F401  (fixtures)

from adapterhub_registry import CorruptBlobError, Registry


def _blob(registry: Registry, ref: str):
    return registry.root / "blobs" / "sha256" / registry.resolve(ref).blob_sha256


def _recorded(registry: Registry, ref: str) -> str | None:
    with sqlite3.connect(registry.root / "index.sqlite") as conn:
        row = conn.execute(
            "SELECT xxh3_128 FROM blob_checksums WHERE blob_sha256 = ?", (registry.resolve(ref).blob_sha256,)
        ).fetchone()
    return row[0] if row else None


def _assert_same_tensors(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(loaded) == sorted(expected)
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
        assert torch.equal(loaded[name], tensor), name


def test_push_records_the_xxh3_128_of_the_stored_bytes(registry, adapter):
    registry.push("a", adapter, method="lora")
    assert _recorded(registry, "a@1") == xxhash.xxh3_128_hexdigest(_blob(registry, "a@1").read_bytes())


@pytest.mark.parametrize("where", ["length prefix", "header", "first tensor byte", "middle", "last byte"])
def test_a_flipped_byte_is_caught_by_the_fast_check_and_nothing_is_returned(registry, adapter, where):
    registry.push("a", adapter, method="lora")
    blob = _blob(registry, "a@1")
    data = bytearray(blob.read_bytes())
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    position = {"length prefix": 0, "header": 12, "first tensor byte": header_end, "middle": len(data) // 2,
                "last byte": len(data) - 1}[where]  # fmt: skip
    data[position] ^= 0x10
    blob.write_bytes(bytes(data))
    assert xxhash.xxh3_128_hexdigest(bytes(data)) != _recorded(registry, "a@1")
    with pytest.raises(
        CorruptBlobError, match=f"adapter a@1: blob {blob} content hashes to .*`adapterhub registry verify`"
    ):
        registry.load("a")


def test_a_blob_that_changed_length_is_caught_before_it_is_read(registry, adapter):
    registry.push("a", adapter, method="lora")
    blob = _blob(registry, "a@1")
    blob.write_bytes(blob.read_bytes()[:-3])
    with pytest.raises(CorruptBlobError, match="has .* bytes, expected .* \\(truncated or overwritten\\)"):
        registry.load("a")


def test_an_old_registry_without_checksums_loads_and_records_one(tmp_path, adapter):
    root = tmp_path / "registry"
    with Registry(root) as old:
        old.push("a", adapter, method="lora")
        blob = _blob(old, "a@1")
    with sqlite3.connect(root / "index.sqlite") as conn:  # the index as versions before the checksum left it
        conn.execute("DROP TABLE blob_checksums")
    with Registry(root) as registry:
        assert _recorded(registry, "a@1") is None
        _, tensors = registry.load("a")
        _assert_same_tensors(tensors, load_safetensors(blob.read_bytes()))
        assert _recorded(registry, "a@1") == xxhash.xxh3_128_hexdigest(blob.read_bytes())
        _, tensors_again = registry.load("a")  # now through the recorded checksum
        _assert_same_tensors(tensors_again, tensors)
        assert registry.verify().ok_all


def test_an_old_registry_without_checksums_still_catches_a_damaged_blob_by_sha256(tmp_path, adapter):
    root = tmp_path / "registry"
    with Registry(root) as old:
        old.push("a", adapter, method="lora")
        blob = _blob(old, "a@1")
    with sqlite3.connect(root / "index.sqlite") as conn:
        conn.execute("DROP TABLE blob_checksums")
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01
    blob.write_bytes(bytes(data))
    with Registry(root) as registry:
        with pytest.raises(CorruptBlobError, match="content hashes to"):
            registry.load("a")
        assert _recorded(registry, "a@1") is None  # a checksum of damaged bytes is never recorded


def test_a_wrong_recorded_checksum_is_settled_by_sha256_and_corrected(registry, adapter):
    registry.push("a", adapter, method="lora")
    with sqlite3.connect(registry.root / "index.sqlite") as conn:
        conn.execute("UPDATE blob_checksums SET xxh3_128 = ?", ("0" * 32,))
    _, tensors = registry.load("a")
    _assert_same_tensors(tensors, load_safetensors(_blob(registry, "a@1").read_bytes()))
    assert _recorded(registry, "a@1") == xxhash.xxh3_128_hexdigest(_blob(registry, "a@1").read_bytes())


def test_deleting_the_last_entry_of_a_blob_drops_its_checksum_and_a_repush_records_it_again(registry, adapter):
    registry.push("a", adapter, method="lora")
    digest = registry.resolve("a@1").blob_sha256
    registry.delete("a")
    with sqlite3.connect(registry.root / "index.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM blob_checksums WHERE blob_sha256 = ?", (digest,)).fetchone() == (0,)
    registry.push("b", adapter, method="lora")
    assert _recorded(registry, "b@1") is not None
    registry.load("b")


def test_load_views_every_dtype_exactly_as_safetensors_loads_it(registry, tmp_path):
    directory = write_adapter(tmp_path / "dtypes")
    generator = torch.Generator().manual_seed(1)
    tensors = {
        "base_model.model.q_proj.lora_A.weight": torch.randn(4, 8, generator=generator),
        "base_model.model.q_proj.lora_B.weight": torch.randn(8, 4, generator=generator).to(torch.bfloat16),
        "half": torch.randn(3, 5, generator=generator).half(),
        "double": torch.randn(7, generator=generator).double(),
        "steps": torch.arange(5, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "bytes": torch.arange(3, dtype=torch.uint8),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5),
    }
    save_file(tensors, directory / "adapter_model.safetensors")
    registry.push("d", directory, method="lora")
    _, loaded = registry.load("d")
    _assert_same_tensors(loaded, tensors)


def test_load_copies_out_a_tensor_whose_offset_is_not_aligned_to_its_dtype(registry, tmp_path):
    directory = write_adapter(tmp_path / "unaligned")
    values = torch.tensor([1.5, -2.25], dtype=torch.float32)
    header = {"odd": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
              "w": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]}}  # fmt: skip
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    data = struct.pack("<Q", len(encoded)) + encoded + bytes([7, 8, 9]) + values.numpy().tobytes()
    (directory / "adapter_model.safetensors").write_bytes(data)
    registry.push("u", directory, method="lora")
    _, loaded = registry.load("u")
    _assert_same_tensors(loaded, {"odd": torch.tensor([7, 8, 9], dtype=torch.uint8), "w": values})
