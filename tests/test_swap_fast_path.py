"""The registry-to-slot swap's fast path (issue 28, item 3): a blob's checked layout and an adapter's slot plan
are kept by content checksum, so a second load of the same blob skips the header parsing and the plugin's
planning; it must fill the slots exactly as the first load did, and a damaged blob is still refused."""

from __future__ import annotations

import json
import shutil
import struct

import peft
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from test_registry_support import adapter, registry, write_adapter  # noqa: F401  (fixtures)
from test_runtime import TOKENS, push_random_adapter
from transformers import AutoModelForCausalLM

from adapterhub.base import load_base
from adapterhub.runtime import AdapterPool
from adapterhub_registry import CorruptBlobError, Registry

ADAPTERS = {
    "padded": {"r": 4},  # rank below the pool's max rank: padding stays zero
    "partial": {"r": 8, "alpha": 4, "rslora": True, "target_modules": "q_proj,v_proj,down_proj"},
}


def _slot_contents(pool: AdapterPool, slot: int) -> dict[str, tuple]:
    return {name: (layer.A[slot].clone(), layer.B[slot].clone(), layer.scales[slot].item(), layer.ranks[slot])
            for name, layer in pool.layers.items()}  # fmt: skip


def _slot_of(pool: AdapterPool, key: str) -> int:
    return next(row["slot"] for row in pool.describe() if row["adapter"] == key)


def _flip_byte(registry: Registry, ref: str, where: str) -> None:
    blob = registry.root / "blobs" / "sha256" / registry.resolve(ref).blob_sha256
    data = bytearray(blob.read_bytes())
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    data[{"header": 12, "data": (header_end + len(data)) // 2}[where]] ^= 0x10
    blob.write_bytes(bytes(data))


@pytest.fixture
def llama(tiny_llama, tmp_path):
    base = load_base(tiny_llama)
    for seed, (name, options) in enumerate(ADAPTERS.items()):
        push_random_adapter(base, name, options, tmp_path, seed)
    pool = AdapterPool(base, slots=2, max_rank=8)
    yield base, pool
    pool.close()


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_reloading_a_blob_fills_its_slot_exactly_as_the_first_load_and_equals_peft(llama, tiny_llama, tmp_path, name):
    base, pool = llama
    key = pool.load(name)  # planned by the LoRA plugin; its layout and plan are kept
    slot, first = _slot_of(pool, key), _slot_contents(pool, _slot_of(pool, key))
    with pool.activate([key]):
        logits = base.model(TOKENS).logits
    pool.unload(key)
    assert pool.load(name) == key and _slot_of(pool, key) == slot  # read again, planned from what was kept
    again = _slot_contents(pool, slot)
    assert again.keys() == first.keys()
    for layer, (A, B, scale, rank) in first.items():
        A2, B2, scale2, rank2 = again[layer]
        assert torch.equal(A2, A) and torch.equal(B2, B) and (scale2, rank2) == (scale, rank), layer
    with pool.activate([key]):
        assert torch.equal(base.model(TOKENS).logits, logits)
    pool.close()
    reference = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), tmp_path / name)
    torch.testing.assert_close(logits, reference.eval()(TOKENS).logits, atol=1e-5, rtol=0)


def test_one_blob_pushed_with_two_configs_gets_each_configs_scale(llama, tmp_path):
    base, pool = llama
    shutil.copytree(tmp_path / "padded", tmp_path / "louder")
    config_file = tmp_path / "louder" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["lora_alpha"] *= 4
    config_file.write_text(json.dumps(config))
    Registry().push("louder", tmp_path / "louder", method="lora", base_fingerprint=base.fingerprint_id)
    assert Registry().resolve("louder").blob_sha256 == Registry().resolve("padded").blob_sha256  # the same bytes
    quiet, loud = pool.load("padded"), pool.load("louder")
    for layer in pool.layers.values():
        assert layer.scale_values[_slot_of(pool, loud)] == 4 * layer.scale_values[_slot_of(pool, quiet)] != 0
    pool.unload(loud)
    pool.load(loud)  # now both configs have a kept plan for this blob: each keeps its own
    for layer in pool.layers.values():
        assert layer.scale_values[_slot_of(pool, loud)] == 4 * layer.scale_values[_slot_of(pool, quiet)]


def test_dora_adapters_are_planned_on_every_load_and_fill_the_same_slot_contents(tiny_llama, tmp_path):
    base = load_base(tiny_llama)
    push_random_adapter(base, "dora", {"r": 4, "dora": True}, tmp_path)
    pool = AdapterPool(base, slots=1, max_rank=4)
    key = pool.load("dora")
    with pool.activate([key]):
        logits = base.model(TOKENS).logits
    out_scales = {name: layer.out_scale[0].clone() for name, layer in pool.layers.items()}
    pool.unload(key)
    pool.load(key)
    for name, layer in pool.layers.items():
        assert torch.equal(layer.out_scale[0], out_scales[name]), name
    with pool.activate([key]):
        assert torch.equal(base.model(TOKENS).logits, logits)
    pool.close()


@pytest.mark.parametrize("where", ["header", "data"])
def test_a_pool_refuses_a_blob_damaged_after_its_first_load(llama, where):
    base, pool = llama
    key = pool.load("padded")
    pool.unload(key)
    _flip_byte(Registry(), key, where)
    with pytest.raises(CorruptBlobError, match=r"adapter padded@1: blob .* content hashes to .*registry verify"):
        pool.load(key)
    assert pool.describe() == []


@pytest.mark.parametrize("where", ["header", "data"])
def test_a_registry_refuses_a_blob_damaged_after_its_layout_was_kept(registry, adapter, where):  # noqa: F811
    registry.push("a", adapter, method="lora")
    registry.load("a")
    _flip_byte(registry, "a@1", where)
    with pytest.raises(CorruptBlobError, match=r"adapter a@1: blob .* content hashes to .*registry verify"):
        registry.load("a")


def test_loading_again_from_the_kept_layout_gives_every_tensor_as_safetensors_does(registry, tmp_path):  # noqa: F811
    directory = write_adapter(tmp_path / "mixed")
    generator = torch.Generator().manual_seed(3)
    tensors = {"half": torch.randn(3, 5, generator=generator).half(), "odd": torch.arange(3, dtype=torch.uint8),
               "w": torch.randn(2, 4, generator=generator), "scalar": torch.tensor(2.5)}  # fmt: skip
    save_file(tensors, directory / "adapter_model.safetensors")
    registry.push("m", directory, method="lora")
    blob = registry.root / "blobs" / "sha256" / registry.resolve("m").blob_sha256
    expected = load_safetensors(blob.read_bytes())
    for _ in range(2):  # the first load checks the header and keeps the layout; the second uses it
        _, loaded = registry.load("m")
        assert sorted(loaded) == sorted(expected)
        for name, tensor in expected.items():
            assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
