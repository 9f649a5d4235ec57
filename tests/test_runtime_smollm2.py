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
    pool = AdapterPool(base, slots=2, max_rank=16)
    tokens = base.tokenizer(["The weather today is", "My favourite food is", "Once upon a time"], return_tensors="pt",
                            padding=True)  # fmt: skip
    rows = ["smol-a", "smol-b", None]
    with pool.activate([None if r is None else f"{r}@1" for r in rows]), torch.inference_mode():
        mixed = base.model(**tokens).logits
    generated = generate(
        pool, ["The capital of France is", "Hello"], ["smol-b", "smol-a"], SamplingParams(max_tokens=8, temperature=0)
    )
    assert all(g.tokens > 0 and g.text for g in generated)
    pool.close()

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
