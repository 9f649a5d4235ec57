"""One batch mixing LoRA, rsLoRA, DoRA and IA3 adapters row by row, each row equal to peft running that adapter
alone: the methods' plugins turn their adapters into slot contents (``MethodSpec.slot_plan``), the core only
holds slots."""

from __future__ import annotations

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from adapterhub import adapters
from adapterhub.base import load_base
from adapterhub.runtime import AdapterPool, classify
from adapterhub_registry import Registry

TOKENS = torch.tensor([[7, 8, 9, 10, 11, 12], [12, 11, 10, 9, 8, 7], [7, 7, 8, 8, 9, 9], [20, 21, 22, 23, 24, 25],
                       [9, 10, 9, 10, 9, 10], [30, 31, 32, 33, 34, 35]])  # fmt: skip
MIXED = {
    "lora": ("lora", {"r": 4}),
    "rslora": ("lora", {"r": 8, "alpha": 4, "rslora": True, "target_modules": "q_proj,v_proj,down_proj"}),
    "dora": ("lora", {"r": 4, "dora": True, "target_modules": "q_proj,k_proj,up_proj,down_proj"}),
    "ia3": ("ia3", {}),  # peft's Llama defaults: k_proj, v_proj (outputs scaled) and down_proj (input scaled)
}


def push_random(base, name, method, options, directory, seed):
    """An adapter of ``method`` with random weights (IA3 vectors around 1), saved as PEFT and pushed."""
    torch.manual_seed(seed)
    options = adapters.make_options(method, options)
    model = adapters.attach(base, method, options)
    for key, parameter in model.named_parameters():
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, mean=1.0 if "ia3_l" in key or "magnitude" in key else 0.0, std=0.2)
    adapters.save_adapter(model, directory / name, adapters.build_manifest(base, method, options))
    model.unload()
    return Registry().push(name, directory / name, method=method, base_fingerprint=base.fingerprint_id)


def alone_in_peft(model_class, path, adapter_dir, **inputs):
    with torch.no_grad():
        return peft.PeftModel.from_pretrained(model_class.from_pretrained(path), adapter_dir).eval()(**inputs).logits


@pytest.fixture
def mixed_pool(tiny_llama, tmp_path):
    base = load_base(tiny_llama)
    for seed, (name, (method, options)) in enumerate(MIXED.items()):
        push_random(base, name, method, options, tmp_path, seed)
    pool = AdapterPool(base, slots=4, max_rank=8)
    yield pool
    pool.close()


def test_every_method_of_the_mix_is_slotted(mixed_pool):
    for name in MIXED:
        key = mixed_pool.load(name)
        assert mixed_pool.fetch(key).kind == "slotted", mixed_pool.fetch(key).reason


def test_a_batch_mixing_lora_rslora_dora_and_ia3_equals_peft_per_row(mixed_pool, tiny_llama, tmp_path):
    rows = ["dora", "ia3", "lora", None, "rslora", "ia3"]
    with mixed_pool.activate([None if name is None else f"{name}@1" for name in rows]), torch.no_grad():
        mixed = mixed_pool.base.model(TOKENS).logits
    for row, name in enumerate(rows):
        inputs = {"input_ids": TOKENS[row : row + 1]}
        if name is None:
            with torch.no_grad():
                expected = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()(**inputs).logits
        else:
            expected = alone_in_peft(AutoModelForCausalLM, tiny_llama, tmp_path / name, **inputs)
        torch.testing.assert_close(mixed[row : row + 1], expected, rtol=1e-5, atol=1e-5, msg=f"row {row} ({name})")


@pytest.mark.parametrize("name", list(MIXED))
def test_one_method_for_the_whole_batch_equals_peft(mixed_pool, tiny_llama, tmp_path, name):
    with mixed_pool.activate([f"{name}@1"]), torch.no_grad():
        ours = mixed_pool.base.model(TOKENS).logits
    torch.testing.assert_close(ours, alone_in_peft(AutoModelForCausalLM, tiny_llama, tmp_path / name, input_ids=TOKENS),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_a_slot_reused_by_another_method_keeps_nothing_of_the_previous_one(tiny_llama, tmp_path):
    base = load_base(tiny_llama)
    for seed, name in enumerate(("ia3", "dora", "lora")):
        push_random(base, name, *MIXED[name], tmp_path, seed)
    pool = AdapterPool(base, slots=1, max_rank=8)
    for name in ("ia3", "dora", "lora", "ia3"):  # one slot: each load overwrites the previous method's contents
        with pool.activate([f"{name}@1"]), torch.no_grad():
            ours = base.model(TOKENS).logits
        expected = alone_in_peft(AutoModelForCausalLM, tiny_llama, tmp_path / name, input_ids=TOKENS)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5, msg=name)
    pool.unload("ia3")
    with pool.activate([None]), torch.no_grad():
        base_only = base.model(TOKENS).logits
    with torch.no_grad():
        torch.testing.assert_close(base_only, AutoModelForCausalLM.from_pretrained(tiny_llama).eval()(TOKENS).logits)


def test_classifiers_of_different_methods_share_a_batch_with_their_own_heads(tiny_bert, tmp_path):
    labels = ["neg", "neu", "pos"]
    base = load_base(tiny_bert, model_task="seq-cls", labels=labels)
    methods = {"cls-dora": ("lora", {"r": 4, "dora": True}), "cls-ia3": ("ia3", {"target_modules": "key,value,output.dense",
               "feedforward_modules": "output.dense"})}  # fmt: skip
    for seed, (name, (method, options)) in enumerate(methods.items()):
        push_random(base, name, method, options, tmp_path, seed)
    pool = AdapterPool(load_base(tiny_bert, model_task="seq-cls", labels=labels), slots=2, max_rank=4)
    texts = ["great movie", "bad awful film", "i hate this"]
    rows = ["cls-ia3", "cls-dora", "cls-ia3"]
    ours = classify(pool, texts, rows)
    assert all(pool.fetch(f"{name}@1").kind == "slotted" for name in methods)
    for text, name, result in zip(texts, rows, ours):
        inputs = base.tokenizer(text, return_tensors="pt")
        model = peft.PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3),
                                               tmp_path / name).eval()  # fmt: skip
        with torch.no_grad():
            expected = model(**inputs).logits.softmax(-1)[0].tolist()
        assert result.scores == pytest.approx(dict(zip(labels, expected)), abs=1e-5)
