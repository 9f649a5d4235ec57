"""Adapters the slots cannot hold, on a tiny Llama: prompt and prefix tuning prefilled through peft and then decoded
in the slotted batch, a LoRA with trained biases in the engine's lane (rows of their own small batch, one step per
engine step beside the slotted batch). Each row equals peft's own greedy decoding of that request alone
(``peft_greedy``), and a slotted request finishes while a long prompt-tuning or lane request still runs."""

from __future__ import annotations

import peft
import pytest
import torch
from test_continuous_engine import greedy, run
from test_runtime import push_random_adapter
from transformers import AutoModelForCausalLM

from adapterhub import adapters
from adapterhub.base import load_base
from adapterhub.runtime import AdapterPool, generate
from adapterhub.runtime.continuous import ContinuousEngine, EngineRequest
from adapterhub_registry import Registry

PROMPT_LEARNING = {
    "soft": ("prompt_tuning", {"num_virtual_tokens": 5}),
    "prefix": ("prefix_tuning", {"num_virtual_tokens": 4}),
}


def push_prompt_learning(base, name, directory, seed):
    """A prompt- or prefix-tuning adapter with random (large) virtual tokens, saved as PEFT and pushed. peft wraps
    the base for these methods without changing it, so there is nothing to unload."""
    method, options = PROMPT_LEARNING[name]
    torch.manual_seed(seed)
    options = adapters.make_options(method, options)
    model = adapters.attach(base, method, options)
    for _, parameter in model.named_parameters():
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.5)
    adapters.save_adapter(model, directory / name, adapters.build_manifest(base, method, options))
    return Registry().push(name, directory / name, method=method, base_fingerprint=base.fingerprint_id)


@pytest.fixture
def lane_pool(tiny_llama, tmp_path):
    base = load_base(tiny_llama)
    push_random_adapter(base, "a0", {"r": 4}, tmp_path, seed=0)
    for seed, name in enumerate(PROMPT_LEARNING, start=1):
        push_prompt_learning(base, name, tmp_path, seed)
    push_random_adapter(base, "biased", {"r": 4, "bias": "lora_only"}, tmp_path, seed=3)  # not slottable: the lane
    pool = AdapterPool(base, slots=2, max_rank=4)
    yield pool
    pool.close()


def peft_greedy(tiny_llama, directory, prompt: list[int], n: int) -> list[int]:
    """The request alone in peft, greedy: ``generate`` for prompt tuning; for prefix tuning a loop over peft's forward
    on the whole text (its ``generate`` passes the prefix as ``past_key_values``, which transformers 5.2x ignores
    next to the ``cache`` it makes)."""
    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), directory).eval()
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        if model.active_peft_config.peft_type != peft.PeftType.PREFIX_TUNING:
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, use_cache=False)  # fmt: skip
            return out[0, len(prompt) :].tolist()
        for _ in range(n):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1:].argmax(-1)], 1)
    return ids[0, len(prompt) :].tolist()


def test_rows_of_unslottable_adapters_equal_peft_decoding_alone(lane_pool, tiny_llama, tmp_path):
    tokenizer = lane_pool.base.tokenizer
    prompts = ["the movie was great", "bad", "we drive fast on the road", "good", "so"]
    adapters = ["soft@1", "soft@1", "prefix@1", "biased@1", "biased@1", "a0@1"]
    requests = [EngineRequest(tokenizer(p)["input_ids"], a, greedy(6)) for p, a in zip(prompts + prompts[:1], adapters)]
    assert [lane_pool.fetch(k).kind for k in ("soft@1", "prefix@1", "biased@1", "a0@1")] == ["peft"] * 3 + ["slotted"]
    engine = ContinuousEngine(lane_pool, max_running=4)
    run(engine, {0: requests[:2], 1: requests[2:]})
    for request, name in zip(requests[:5], [a.partition("@")[0] for a in adapters]):  # the lane's two rows are padded
        assert request.generated == peft_greedy(tiny_llama, tmp_path / name, request.prompt, 6), name
    assert not engine.lane.rows and not engine.lane.waiting and not engine.running
    # --batching static: one peft generate per adapter (prefix tuning left out: peft 0.21's generate passes its
    # prefix as past_key_values, which transformers 5.2x ignores next to its own cache, with or without use_cache)
    static = [requests[i] for i in (0, 1, 3, 4)]
    together = generate(lane_pool, [r.prompt for r in static], [r.adapter for r in static], greedy(6))
    assert [g.token_ids for g in together] == [r.generated for r in static]


@pytest.mark.parametrize("unslottable", ["soft@1", "biased@1"])
def test_a_slotted_request_finishes_while_a_long_unslottable_one_runs(lane_pool, unslottable):
    tokenizer = lane_pool.base.tokenizer
    long = EngineRequest(tokenizer("the movie was great")["input_ids"], unslottable, greedy(40))
    short = EngineRequest(tokenizer("bad film")["input_ids"], "a0@1", greedy(3))
    engine = ContinuousEngine(lane_pool, max_running=4)
    engine.submit(long)
    engine.step(), engine.step()
    engine.submit(short)
    while short.finished is None:
        assert all(event.error is None for _, event in engine.step())
    assert long.finished is None and 0 < len(long.generated) < 10  # the long request keeps going beside it
    _, finished, _ = run(engine, {})
    assert finished == [long.id] and len(long.generated) == 40
