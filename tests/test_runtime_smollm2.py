"""Slow: the adapter pool on SmolLM2-135M (GGUF) with two LoRAs pushed to the registry: a mixed batch equals
each row alone in peft, and per-row generation runs."""

from __future__ import annotations

import peft
import pytest
import torch
from shipped_assets import smollm2_gguf
from test_runtime import push_random_adapter

from adapterhub.base import load_base
from adapterhub.runtime import AdapterPool, SamplingParams, generate

pytestmark = pytest.mark.slow


def test_smollm2_mixed_batch_equals_peft_per_row_and_generates(tmp_path):
    base = load_base(smollm2_gguf())
    push_random_adapter(base, "smol-a", {"r": 8, "target_modules": "q_proj,v_proj,down_proj"}, tmp_path, seed=1)
    push_random_adapter(base, "smol-b", {"r": 16, "rslora": True, "target_modules": ["all-linear"]}, tmp_path, seed=2)
    tokens = base.tokenizer(["The weather today is", "My favourite food is", "Once upon a time"], return_tensors="pt",
                            padding=True)  # fmt: skip
    rows = ["smol-a", "smol-b", None]
    logits = {}
    for pack in (False, None):  # nn.Linear's products, then the packed weights auto chooses for SmolLM2
        pool = AdapterPool(base, slots=2, max_rank=16, pack_weights=pack)
        assert (pool.packed_head is not None) == (pack is None)
        with pool.activate([None if r is None else f"{r}@1" for r in rows]), torch.inference_mode():
            logits[pack] = base.model(**tokens).logits
        generated = generate(
            pool,
            ["The capital of France is", "Hello"],
            ["smol-b", "smol-a"],
            SamplingParams(max_tokens=8, temperature=0),
        )
        assert all(g.tokens > 0 and g.text for g in generated)
        pool.close()
    mixed = logits[False]
    # oneDNN sums in another order, and over 30 float32 layers that moves logits (up to ~30) by up to 1.2e-3 here: the
    # float32 rounding itself, as large for nn.Linear (measured against the same forward in float64: nn.Linear's
    # logits 0.95e-3 off, the packed ones 1.01e-3)
    real = tokens["attention_mask"].bool()  # padded positions are not compared
    torch.testing.assert_close(logits[None][real], mixed[real], rtol=0, atol=2e-3)

    reference = peft.PeftModel.from_pretrained(base.model, tmp_path / "smol-a", adapter_name="smol-a").eval()
    reference.load_adapter(tmp_path / "smol-b", adapter_name="smol-b")
    with torch.inference_mode():
        for row, adapter in enumerate(rows):
            inputs = {k: v[row : row + 1] for k, v in tokens.items()}
            if adapter is None:
                with reference.disable_adapter():
                    expected = reference(**inputs).logits
            else:
                reference.set_adapter(adapter)
                expected = reference(**inputs).logits
            mask = inputs["attention_mask"][0].bool()  # padded positions are not compared
            torch.testing.assert_close(mixed[row][mask], expected[0][mask], rtol=1e-4, atol=1e-4)


def test_smollm2_engine_decodes_the_same_tokens_with_packed_and_unpacked_weights(tmp_path):
    """The decode step's fast paths on the real model (issue 28): 8 rows over 3 adapters and the base, 16 greedy
    tokens each, through the continuous engine with packed weights (auto packs SmolLM2's) and with nn.Linear's."""
    from adapterhub.runtime.continuous import ContinuousEngine, EngineRequest

    base = load_base(smollm2_gguf())
    for i in range(3):
        push_random_adapter(base, f"smol-{i}", {"r": 16, "target_modules": ["all-linear"]}, tmp_path, seed=i)
    prompts = ["The weather today is", "My favourite food is", "Once upon a time", "The capital of France is"]
    adapters = ["smol-0@1", "smol-1@1", None, "smol-2@1"]

    def decode(pack: bool | None) -> list[list[int]]:
        pool = AdapterPool(base, slots=4, max_rank=16, pack_weights=pack)
        try:
            assert (pool.packed_head is not None) == (pack is None)
            engine = ContinuousEngine(pool, max_running=8)
            requests = [EngineRequest(base.tokenizer(p)["input_ids"], adapters[(i + j) % 4],
                                      SamplingParams(max_tokens=16, temperature=0, ignore_eos=True))
                        for i, p in enumerate(prompts) for j in range(2)]  # fmt: skip
            for r in requests:
                engine.submit(r)
            while engine.has_work():
                engine.step()
            return [r.generated for r in requests]
        finally:
            pool.close()

    assert decode(None) == decode(False)
