"""The decode step's fast paths (issue 28) equal the plain ones: oneDNN-packed base weights against ``nn.Linear``,
the all-slots LoRA product against each row's gathered adapter, and the in-place growing KV cache against
transformers' concatenating ``DynamicCache``. Logits within 1e-4 in float32; greedy tokens identical."""

from __future__ import annotations

import logging

import pytest
import torch
from test_runtime import push_random_adapter
from transformers import DynamicCache

from adapterhub import kernels
from adapterhub.base import load_base
from adapterhub.runtime import AdapterPool, SamplingParams
from adapterhub.runtime.continuous import ContinuousEngine, EngineRequest
from adapterhub.runtime.kv_rows import GrowingLayer, RowCache
from adapterhub.runtime.packed import PackedHead, PackedWeight, worth_packing

PROMPTS = ["the movie was great", "i hate this car very much and", "good", "we drive fast on the road", "bad film",
           "this is not a very good film but i love it", "so", "they love fast cars"]  # fmt: skip
ADAPTERS = ["a0@1", "a1@1", None, "a2@1", "a0@1", "a1@1", None, "a2@1"]


@pytest.fixture
def base(tiny_llama, tmp_path):
    base = load_base(tiny_llama)
    for i in range(3):
        push_random_adapter(base, f"a{i}", {"r": 4}, tmp_path, seed=i)
    return base


def _logits_and_tokens(base, pack: bool) -> tuple[torch.Tensor, list[list[int]]]:
    """One mixed-adapter forward's logits and each row's 12 greedy tokens from the continuous engine."""
    pool = AdapterPool(base, slots=4, max_rank=4, pack_weights=pack)
    try:
        assert all((layer.packed is not None) == pack for layer in pool.layers.values())
        assert (pool.packed_head is not None) == pack
        for key in sorted({a for a in ADAPTERS if a}):
            pool.load(key)
        batch = base.tokenizer(PROMPTS, return_tensors="pt", padding=True)
        with torch.inference_mode(), pool.activate(ADAPTERS):
            logits = base.model(**batch).logits
        engine = ContinuousEngine(pool, max_running=8, prefill_chunk=16)
        requests = [EngineRequest(base.tokenizer(p)["input_ids"], a, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
                    for p, a in zip(PROMPTS, ADAPTERS)]  # fmt: skip
        for r in requests:
            engine.submit(r)
        while engine.has_work():
            engine.step()
        return logits, [r.generated for r in requests]
    finally:
        pool.close()


def test_packed_weights_give_the_logits_and_tokens_of_nn_linear(base):
    packed_logits, packed_tokens = _logits_and_tokens(base, pack=True)
    assert "forward" not in base.model.get_output_embeddings().__dict__  # close() gave the head its forward back
    plain_logits, plain_tokens = _logits_and_tokens(base, pack=False)
    torch.testing.assert_close(packed_logits, plain_logits, rtol=0, atol=1e-4)
    assert packed_tokens == plain_tokens


def test_auto_packs_only_weights_big_enough_to_gain_and_refuses_what_it_cannot_pack(base, caplog):
    pool = AdapterPool(base, slots=2, max_rank=4)  # auto: the tiny Llama's 64 x 64 weights are too small to gain
    assert all(layer.packed is None for layer in pool.layers.values()) and pool.packed_head is None
    pool.close()
    assert worth_packing(torch.empty(1536, 576)) and not worth_packing(torch.empty(64, 128))
    base.model.to(torch.bfloat16)
    with caplog.at_level(logging.WARNING):
        pool = AdapterPool(base, slots=2, max_rank=4, pack_weights=True)
    assert all(layer.packed is None for layer in pool.layers.values()) and pool.packed_head is None
    assert "packing is for float32 on a CPU" in caplog.text
    pool.close()


def test_a_weight_changed_in_place_is_packed_again_and_gradients_use_the_original():
    linear = torch.nn.Linear(8, 6)
    packed = PackedWeight(linear)
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(packed.linear(x, linear.bias), linear(x), rtol=0, atol=1e-5)
        linear.weight.mul_(2.0)
        torch.testing.assert_close(packed.linear(x, linear.bias), linear(x), rtol=0, atol=1e-5)
    assert packed.linear(x.requires_grad_(), linear.bias) is None  # autograd needs nn.Linear's own product
    head = PackedHead(linear)
    assert linear(x).requires_grad  # the head falls back to its own forward under autograd
    head.detach()
    assert "forward" not in linear.__dict__


@pytest.mark.parametrize("rows, seq", [(5, 3), (7, None), (1, 40)])
def test_all_slots_product_equals_each_row_gathered(rows, seq):
    slots, r_max, d_in, d_out = 4, 6, 32, 20  # slots * r_max <= d_in: the all-slots product
    generator = torch.Generator().manual_seed(rows)
    A = torch.randn(slots, r_max, d_in, generator=generator)
    B = torch.randn(slots, r_max, d_out, generator=generator).transpose(1, 2)  # stored as LayerSlots stores it
    scales = torch.rand(slots, generator=generator) + 0.5
    x = torch.randn(rows, *([seq] if seq else []), d_in, generator=generator)
    slot_ids = torch.randint(0, slots, (rows,), generator=generator)
    delta = kernels.lora_gather_forward(x, A, B, scales, slot_ids)
    gathered = kernels.lora_gather_forward(x, A, B.contiguous(), scales, slot_ids)  # B contiguous: the gather
    torch.testing.assert_close(delta, gathered, rtol=1e-5, atol=1e-5)
    for row, slot in enumerate(slot_ids.tolist()):
        alone = kernels.lora_forward(x[row], A[slot], B[slot], scales[slot].item())
        torch.testing.assert_close(delta[row], alone, rtol=1e-5, atol=1e-5)


def _prefilled(length: int, value: float, rows: int = 1) -> DynamicCache:
    cache = DynamicCache()
    for layer in range(2):
        cache.update(
            torch.full((rows, 2, length, 4), value + layer), torch.full((rows, 2, length, 4), -value - layer), layer
        )
    return cache


def test_the_growing_cache_holds_what_concatenation_holds_through_joins_steps_and_leaves():
    rows = RowCache()
    rows.join(_prefilled(3, 1.0), 3)
    rows.join(_prefilled(5, 2.0, rows=2), 5, rows=2)
    assert all(type(layer) is GrowingLayer for layer in rows.cache.layers)
    generator = torch.Generator().manual_seed(0)
    expected = [torch.cat([torch.nn.functional.pad(torch.full((1, 2, 3, 4), 1.0 + i), (0, 0, 2, 0)),
                           torch.full((2, 2, 5, 4), 2.0 + i)]) for i in range(2)]  # fmt: skip
    for _ in range(GrowingLayer.SPARE + 10):  # past the spare columns: the buffers grow
        for i, layer in enumerate(rows.cache.layers):
            new = torch.randn(3, 2, 1, 4, generator=generator)
            keys, values = layer.update(new, -new)
            expected[i] = torch.cat([expected[i], new], dim=2)
            assert torch.equal(keys, expected[i]) and torch.equal(values[:, :, 5:], -expected[i][:, :, 5:])
        rows.stepped()
    rows.keep([2, 0])
    for i, layer in enumerate(rows.cache.layers):
        assert torch.equal(layer.keys, expected[i][[2, 0]])
    layer = rows.cache.layers[0]
    layer.batch_select_indices(torch.tensor([1]))  # a DynamicLayer method replacing the views: updates still append
    keys, _ = layer.update(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4))
    assert torch.equal(keys[:, :, :-1], expected[0][[0]]) and (keys[:, :, -1] == 1).all()
