"""The adapter pool: slotted adapters equal peft row by row (mixed batches, heads, rsLoRA, padded ranks),
LRU tiers, base fingerprint checks, and non-slottable adapters swapping through peft."""

from __future__ import annotations

import peft
import pytest
import torch
from tiny_models import make_tiny_llama
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from adapterhub import adapters
from adapterhub.base import load_base
from adapterhub.errors import AdapterHubError, IncompatibleBaseError
from adapterhub.runtime import AdapterPool, SamplingParams, classify, generate
from adapterhub_registry import Registry

TOKENS = torch.tensor([[7, 8, 9, 10, 11, 12], [12, 11, 10, 9, 8, 7], [7, 7, 8, 8, 9, 9], [20, 21, 22, 23, 24, 25]])
LLAMA_ADAPTERS = {
    "plain": {"r": 4},
    "rs": {"r": 8, "alpha": 4, "rslora": True, "target_modules": "q_proj,v_proj,down_proj"},
}


def key(name: str | None) -> str | None:
    """The pool's key of an adapter pushed once (version 1); None stays the base."""
    return None if name is None else f"{name}@1"


def push_random_adapter(base, name, options, directory, seed=0):
    """A LoRA with random (non-zero) weights, saved as a PEFT directory and pushed to the registry."""
    torch.manual_seed(seed)
    options = adapters.make_options("lora", options)
    model = adapters.attach(base, "lora", options)
    for _, parameter in model.named_parameters():
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.2)
    adapters.save_adapter(model, directory / name, adapters.build_manifest(base, "lora", options))
    model.unload()
    return Registry().push(name, directory / name, method="lora", base_fingerprint=base.fingerprint_id)


@pytest.fixture
def llama_pool(tiny_llama, tmp_path):
    base = load_base(tiny_llama)
    for seed, (name, options) in enumerate(LLAMA_ADAPTERS.items()):
        push_random_adapter(base, name, options, tmp_path, seed)
    pool = AdapterPool(base, slots=2, max_rank=8)
    yield pool
    pool.close()


def peft_reference(model_class, path, tmp_path, names, **load):
    plain = model_class.from_pretrained(path, **load)
    model = peft.PeftModel.from_pretrained(plain, tmp_path / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(tmp_path / name, adapter_name=name)
    return model.eval()


def alone(model, adapter, **inputs):
    if adapter is None:
        with model.disable_adapter():
            return model(**inputs).logits
    model.set_adapter(adapter)
    return model(**inputs).logits


def test_mixed_batch_equals_each_row_alone_in_peft(llama_pool, tiny_llama, tmp_path):
    rows = ["plain", "rs", None, "rs"]
    with llama_pool.activate([key(a) for a in rows]):
        mixed = llama_pool.base.model(TOKENS).logits
    reference = peft_reference(AutoModelForCausalLM, tiny_llama, tmp_path, list(LLAMA_ADAPTERS))
    for row, adapter in enumerate(rows):
        expected = alone(reference, adapter, input_ids=TOKENS[row : row + 1])
        torch.testing.assert_close(mixed[row : row + 1], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mixed[1], mixed[3][[0]].expand_as(mixed[1]))


def test_one_adapter_for_the_whole_batch_equals_peft(llama_pool, tiny_llama, tmp_path):
    reference = peft_reference(AutoModelForCausalLM, tiny_llama, tmp_path, list(LLAMA_ADAPTERS))
    for adapter in ("rs", "plain", None):
        with llama_pool.activate([key(adapter)]):
            ours = llama_pool.base.model(TOKENS).logits
        torch.testing.assert_close(ours, alone(reference, adapter, input_ids=TOKENS), rtol=1e-5, atol=1e-5)


def test_outside_activate_the_base_is_untouched(llama_pool, tiny_llama):
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    llama_pool.load("plain")
    assert torch.equal(llama_pool.base.model(TOKENS).logits, plain(TOKENS).logits)
    llama_pool.close()
    assert type(llama_pool.base.model.model.layers[0].self_attn.q_proj) is torch.nn.Linear


def test_least_recently_used_adapter_goes_to_host_and_comes_back(tiny_llama, tmp_path):
    base = load_base(tiny_llama)
    for seed, (name, options) in enumerate(LLAMA_ADAPTERS.items()):
        push_random_adapter(base, name, options, tmp_path, seed)
    pool = AdapterPool(base, slots=1, max_rank=8)
    pool.load("plain")
    with pool.activate(["plain@1"]):
        before = base.model(TOKENS).logits
    pool.load("rs")
    tiers = {row["adapter"]: row["tier"] for row in pool.describe()}
    assert tiers == {"plain@1": "host", "rs@1": "device"}
    loads = pool.stats.registry_loads
    with pool.activate(["plain@1"]):
        assert torch.equal(base.model(TOKENS).logits, before)
    assert pool.stats.registry_loads == loads and pool.stats.device_evictions == 2
    pool.unload("plain")
    assert [row["adapter"] for row in pool.describe()] == ["rs@1"]


def test_unloading_a_name_drops_the_version_loaded_even_after_a_newer_push(tiny_llama, tmp_path):
    base = load_base(tiny_llama)
    push_random_adapter(base, "plain", {"r": 4}, tmp_path / "v1", seed=1)
    pool = AdapterPool(base, slots=2, max_rank=4)
    assert pool.load("plain") == "plain@1"
    push_random_adapter(base, "plain", {"r": 4}, tmp_path / "v2", seed=2)  # the registry's newest is now plain@2
    assert pool.unload("plain") == "plain@1" and pool.describe() == []
    assert (pool.load("plain@1"), pool.load("plain")) == ("plain@1", "plain@2")
    push_random_adapter(base, "plain", {"r": 4}, tmp_path / "v3", seed=3)
    with pytest.raises(AdapterHubError, match=r"plain has 2 versions loaded \(plain@1, plain@2\); unload one by"):
        pool.unload("plain")
    assert pool.unload("plain@2") == "plain@2" and [row["adapter"] for row in pool.describe()] == ["plain@1"]


def test_adapter_for_another_base_is_refused_naming_both(tiny_llama, tmp_path):
    other = load_base(make_tiny_llama(tmp_path / "other", seed=3))
    record = push_random_adapter(other, "foreign", {"r": 4}, tmp_path)
    pool = AdapterPool(load_base(tiny_llama), slots=1, max_rank=4)
    with pytest.raises(IncompatibleBaseError, match=f"{record.base_fingerprint}.*{pool.base.fingerprint_id}"):
        pool.load("foreign")
    assert pool.describe() == []


def test_lora_with_trained_biases_is_not_slottable_and_swaps_through_peft(llama_pool, tiny_llama, tmp_path):
    push_random_adapter(llama_pool.base, "biased", {"r": 4, "bias": "lora_only"}, tmp_path, seed=7)
    llama_pool.load("biased")
    assert llama_pool.fetch("biased@1").kind == "peft" and "bias" in llama_pool.fetch("biased@1").reason
    reference = peft_reference(AutoModelForCausalLM, tiny_llama, tmp_path, ["biased", "plain"])
    with llama_pool.peft_adapter("biased@1") as model:
        ours = model(TOKENS).logits
    torch.testing.assert_close(ours, alone(reference, "biased", input_ids=TOKENS), rtol=1e-5, atol=1e-5)
    with llama_pool.activate(["plain@1"]):  # slotted adapters still run while the peft adapter stays attached
        torch.testing.assert_close(llama_pool.base.model(TOKENS).logits, alone(reference, "plain", input_ids=TOKENS),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip


def test_generation_gives_each_row_its_own_adapter(llama_pool, tiny_llama, tmp_path):
    prompts = ["the movie was very", "i love this film", "they drive cars fast"]
    rows = ["plain", None, "rs"]
    ours = generate(llama_pool, prompts, rows, SamplingParams(max_tokens=6, temperature=0))
    reference = peft_reference(AutoModelForCausalLM, tiny_llama, tmp_path, list(LLAMA_ADAPTERS))
    tokenizer = llama_pool.base.tokenizer
    for prompt, adapter, result in zip(prompts, rows, ours):
        ids = tokenizer(prompt, return_tensors="pt")
        if adapter is None:
            with reference.disable_adapter():
                out = reference.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        else:
            reference.set_adapter(adapter)
            out = reference.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert result.text == tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    sampled = generate(llama_pool, prompts, rows, SamplingParams(max_tokens=4, seed=1, top_k=5))
    assert sampled == generate(llama_pool, prompts, rows, SamplingParams(max_tokens=4, seed=1, top_k=5))


def test_classification_heads_are_per_adapter_and_equal_peft(tiny_bert, tmp_path):
    labels = ["neg", "neu", "pos"]
    base = load_base(tiny_bert, model_task="seq-cls", labels=labels)
    push_random_adapter(base, "sent-a", {"r": 4}, tmp_path, seed=1)
    push_random_adapter(base, "sent-b", {"r": 2, "target_modules": "query,value"}, tmp_path, seed=2)
    base = load_base(tiny_bert, model_task="seq-cls", labels=labels)  # fresh head: the adapters bring their own
    pool = AdapterPool(base, slots=2, max_rank=4)
    texts = ["great movie", "bad awful film", "i hate this", "so fun"]
    rows = ["sent-a", "sent-b", "sent-b", "sent-a"]
    ours = classify(pool, texts, rows)
    reference = peft_reference(
        AutoModelForSequenceClassification, tiny_bert, tmp_path, ["sent-a", "sent-b"], num_labels=3
    )
    for text, adapter, result in zip(texts, rows, ours):
        logits = alone(reference, adapter, **base.tokenizer(text, return_tensors="pt"))
        expected = logits.softmax(-1)[0].tolist()
        assert result.scores == pytest.approx(dict(zip(labels, expected)), abs=1e-5)
        assert result.label == labels[max(range(3), key=expected.__getitem__)]


def test_slots_wrap_a_quantized_base_and_equal_peft_on_it(tiny_llama, tmp_path):
    push_random_adapter(load_base(tiny_llama), "plain", {"r": 4}, tmp_path)
    base = load_base(tiny_llama, quantize="nf4")
    pool = AdapterPool(base, slots=1, max_rank=4)
    with pool.activate(["plain@1"]):
        ours = base.model(TOKENS).logits
    assert type(base.model.model.layers[0].mlp.down_proj).__name__ == "SlottedLayerLinear4bit"
    pool.close()
    reference = peft.PeftModel.from_pretrained(base.model, tmp_path / "plain").eval()
    # peft re-dispatches the 4-bit weights when it wraps them, which moves the *base* outputs of a layer by up
    # to one NF4 step (the LoRA deltas are bit-equal), hence the looser tolerance than on a float base.
    torch.testing.assert_close(ours, reference(TOKENS).logits, rtol=0, atol=2e-3)


@pytest.mark.parametrize("slots, host_capacity", [(2, 1), (3, 0)])
def test_more_adapters_than_slots_and_host_cache_cycle_through_and_equal_peft(
    tiny_llama, tmp_path, slots, host_capacity
):
    base = load_base(tiny_llama)
    names = [f"cycle{i}" for i in range(5)]
    for seed, name in enumerate(names):
        push_random_adapter(base, name, {"r": 2 + 2 * (seed % 2)}, tmp_path, seed)
    pool = AdapterPool(base, slots=slots, max_rank=4, host_capacity=host_capacity)
    reference = peft_reference(AutoModelForCausalLM, tiny_llama, tmp_path, names)
    expected = {name: alone(reference, name, input_ids=TOKENS) for name in names}
    for name in names + names[::-1]:  # every load past the first few evicts from the slots and from the host
        pool.load(name)
        with pool.activate([key(name)]):
            torch.testing.assert_close(base.model(TOKENS).logits, expected[name], rtol=1e-5, atol=1e-5)
        tiers = [row["tier"] for row in pool.describe()]
        assert tiers.count("device") <= slots and tiers.count("host") <= host_capacity
    rows = names[-slots:]  # a mixed batch of adapters that were pushed out of the slots and the host
    with pool.activate([key(a) for a in rows]):
        mixed = base.model(TOKENS[:slots]).logits
    for row, name in enumerate(rows):
        torch.testing.assert_close(mixed[row], expected[name][row], rtol=1e-5, atol=1e-5)
    assert pool.stats.host_evictions > 0 and pool.stats.device_evictions > 0


@pytest.mark.parametrize("options", [{"r": 2}, {"r": 2, "bias": "lora_only"}], ids=["slotted", "through peft"])
def test_adapter_whose_head_has_another_number_of_labels_is_refused_naming_both(tiny_bert, tmp_path, options):
    five = load_base(tiny_bert, model_task="seq-cls", labels=["1", "2", "3", "4", "5"])
    push_random_adapter(five, "stars", options, tmp_path)
    pool = AdapterPool(load_base(tiny_bert, model_task="seq-cls", labels=["neg", "neu", "pos"]), slots=2, max_rank=2)
    with pytest.raises(IncompatibleBaseError, match="5 labels.* 3 labels"):
        pool.load("stars")
    assert pool.describe() == []
