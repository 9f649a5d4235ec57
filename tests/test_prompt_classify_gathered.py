"""Prompt classification requests for different adapters are gathered: the slotted ones share every forward (each
row with its own request's adapter, as ``/v1/`` batches rows), and each answer equals that adapter scored alone by
``adapterhub.prompting`` on a base of its own. More adapters than the pool has slots are split into as few calls as
fit; an adapter that cannot live in a slot is scored through peft in a call of its own."""

from __future__ import annotations

import pytest
from test_runtime import push_random_adapter

from adapterhub import adapters
from adapterhub.base import load_base
from adapterhub.prompting import PromptScorer, PromptSpec
from adapterhub.runtime import AdapterPool
from adapterhub.server.prompt_classify import prompt_key, run_prompt_classify
from adapterhub.server.schemas import ClassifyRequest

TEMPLATE = "Review: {text}\nIs it {labels}? Answer:"
LABELS = ["negative", "positive"]
VERBALIZER = {"negative": "bad", "positive": "very good"}  # answers of 1 and 2 tokens: two rows per text
EXAMPLES = [{"text": "i love this film", "label": "positive"}, {"text": "the car was so boring", "label": "negative"}]
TEXTS = ["the movie was fun", "they drive a slow car", "i hate that road"]


@pytest.fixture(scope="module")
def pool_and_references(tiny_llama, tmp_path_factory):
    directory = tmp_path_factory.mktemp("gathered")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ADAPTERHUB_HOME", str(directory / "home"))
        base = load_base(tiny_llama)
        for seed, name in enumerate(("a", "b", "c")):
            push_random_adapter(base, name, {"r": 4}, directory, seed=seed + 1)
        push_random_adapter(base, "wide", {"r": 8}, directory, seed=9)  # rank 8 > the pool's 4: through peft
        pool = AdapterPool(base, slots=2, max_rank=4)
        keys = {name: pool.load(name) for name in ("a", "b", "c", "wide")}
    references = {None: load_base(tiny_llama).model}
    for key in keys.values():
        references[key] = adapters.load_registry_adapter(load_base(tiny_llama), *pool.registry.load(key))
    yield pool, keys, references
    pool.close()


def scored_alone(pool, model, texts, examples):
    shots = None
    if examples:
        from adapterhub.data import ClassificationData

        shots = ClassificationData([e["text"] for e in examples], [LABELS.index(e["label"]) for e in examples], LABELS)
    scorer = PromptScorer(pool.base.tokenizer, PromptSpec(TEMPLATE, VERBALIZER, len(examples)), LABELS, shots)
    return scorer.score(model, texts).tolist()


def forwards_of(pool, run):
    """How many forwards of the base model ``run()`` made (a hook on the real model, nothing replaced)."""
    calls = []
    handle = pool.base.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        result = run()
    finally:
        handle.remove()
    return result, len(calls)


@pytest.mark.parametrize("examples", [[], EXAMPLES], ids=["zero-shot", "with-examples"])
def test_requests_for_different_slotted_adapters_share_each_forward(pool_and_references, examples):
    pool, keys, references = pool_and_references
    requests = [(text, adapter) for text in TEXTS for adapter in (None, keys["a"], keys["b"])]
    payloads = [ClassifyRequest(text=t, adapter=a, template=TEMPLATE, labels=LABELS, verbalizer=VERBALIZER,
                                examples=examples) for t, a in requests]  # fmt: skip
    key = prompt_key(payloads[0], pool.base.tokenizer, 256)
    answers, forwards = forwards_of(pool, lambda: run_prompt_classify(pool, payloads, key))
    alone = [forwards_of(pool, lambda rows=payloads[i::3]: run_prompt_classify(pool, rows, key))[1] for i in range(3)]
    # 9 requests over 3 adapters: 18 rows in 2 batches of 16, plus the prompts' shared beginning once (one cache row
    # per adapter): the 3 forwards that scoring each adapter's 3 requests alone takes 2 of, 6 in all
    assert forwards == 3 and alone == [2, 2, 2]
    expected = {adapter: scored_alone(pool, model, TEXTS, examples) for adapter, model in references.items()}
    for (text, adapter), answer in zip(requests, answers):
        got = [answer["log_likelihoods"][label] for label in LABELS]
        assert got == pytest.approx(expected[adapter][TEXTS.index(text)], abs=1e-4)
        assert answer["adapter"] == adapter


def test_more_adapters_than_slots_and_a_peft_adapter_are_split_into_calls_that_fit(pool_and_references):
    pool, keys, references = pool_and_references
    requests = [(text, keys[name]) for text in TEXTS[:2] for name in ("a", "b", "c", "wide")] + [(TEXTS[2], None)]
    payloads = [ClassifyRequest(text=t, adapter=a, template=TEMPLATE, labels=LABELS, verbalizer=VERBALIZER)
                for t, a in requests]  # fmt: skip
    key = prompt_key(payloads[0], pool.base.tokenizer, 256)
    answers = run_prompt_classify(pool, payloads, key)
    for (text, adapter), answer in zip(requests, answers):
        expected = scored_alone(pool, references[adapter], [text], [])[0]
        assert [answer["log_likelihoods"][label] for label in LABELS] == pytest.approx(expected, abs=1e-4)
