"""The completions API as vLLM speaks it, driven by the official ``openai`` client against the server on loopback,
each answer compared with transformers + peft on the same adapter (exported from the registry in PEFT format):
token-id and several prompts, ``n``, ``logprobs`` and ``echo`` (whole and streamed), chat ``logprobs``,
penalties and ``logit_bias``; vLLM's ``/tokenize``, ``/detokenize`` and ``/tokenizer_info``; what the static
batcher cannot do is a 400 naming the field."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch
from fastapi.testclient import TestClient
from live_server import LiveServer
from peft import PeftModel
from test_openai_server import CHAT_TEMPLATE, push_adapter
from transformers import AutoModelForCausalLM

from adapterhub.base import load_base
from adapterhub.runtime import AdapterPool
from adapterhub.server import ServerSettings, create_app
from adapterhub_registry import Registry

PROMPTS = ("the movie was", "i love this film and")


@pytest.fixture(scope="module")
def served(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-api")
    registry = Registry(root / "registry")
    base = load_base(tiny_llama)
    base.tokenizer.chat_template = CHAT_TEMPLATE
    push_adapter(base, registry, "a", root, 1)
    pool = AdapterPool(base, slots=2, max_rank=4, registry=registry)
    settings = ServerSettings(max_input_tokens=64, max_new_tokens=32, max_waiting=100, model_name="tiny")
    server = LiveServer(create_app(pool, settings))
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), registry.export_peft("a", root / "peft")
    ).eval()
    yield server, reference, base.tokenizer
    server.stop()
    pool.close()


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served[0].url + "/v1", api_key="none", max_retries=0)


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


@torch.no_grad()
def logprobs_of(reference, tokens: list[int]) -> torch.Tensor:
    """(positions, vocabulary): the log-probabilities of the token after each position of ``tokens``."""
    return reference(torch.tensor([tokens])).logits[0].float().log_softmax(-1)


@torch.no_grad()
def greedy(reference, tokens: list[int], count: int, **processors) -> list[int]:
    """transformers' own greedy ``generate`` with the peft model: ``count`` new tokens, EOS banned."""
    out = reference.generate(input_ids=torch.tensor([tokens]), max_new_tokens=count, min_new_tokens=count,
                             do_sample=False, **processors)  # fmt: skip
    return out[0, len(tokens) :].tolist()


@pytest.mark.integration
def test_token_id_prompts_and_n_choices_come_prompt_major_and_equal_generate(served, client):
    _, reference, tokenizer = served
    prompts = [ids_of(tokenizer, p) for p in PROMPTS]
    answer = client.completions.create(model="a", prompt=prompts, n=2, max_tokens=5, temperature=0,
                                       extra_body={"min_tokens": 5})  # fmt: skip
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    expected = [tokenizer.decode(greedy(reference, p, 5), skip_special_tokens=True) for p in prompts]
    assert [c.text for c in answer.choices] == [expected[0], expected[0], expected[1], expected[1]]
    assert answer.usage.prompt_tokens == sum(map(len, prompts)) and answer.usage.completion_tokens == 20
    texts = client.completions.create(model="a", prompt=list(PROMPTS), max_tokens=5, temperature=0,
                                      extra_body={"min_tokens": 5})  # fmt: skip
    assert [c.text for c in texts.choices] == expected


@pytest.mark.integration
def test_a_seeded_sampled_request_with_n_rows_is_reproducible(client):
    body = dict(model="a", prompt="the movie was", n=3, max_tokens=6, temperature=1.0, seed=7)
    first, again = client.completions.create(**body), client.completions.create(**body)
    assert len(first.choices) == 3 and [c.text for c in first.choices] == [c.text for c in again.choices]


@pytest.mark.integration
def test_logprobs_equal_the_peft_forward_whole_and_streamed(served, client):
    _, reference, tokenizer = served
    prompt = ids_of(tokenizer, PROMPTS[0])
    whole = client.completions.create(model="a", prompt=prompt, max_tokens=4, temperature=0, logprobs=3,
                                      extra_body={"min_tokens": 4})  # fmt: skip
    generated = greedy(reference, prompt, 4)
    expected = logprobs_of(reference, prompt + generated)[len(prompt) - 1 : -1]  # (4, vocabulary)
    logprobs = whole.choices[0].logprobs
    assert logprobs.tokens == [tokenizer.decode([t]) for t in generated]
    assert logprobs.token_logprobs == pytest.approx([expected[i, t].item() for i, t in enumerate(generated)], abs=1e-4)
    for i, top in enumerate(logprobs.top_logprobs):  # the chosen token (the best here) and the 3 best
        values, ids = expected[i].topk(3)
        assert top == pytest.approx({tokenizer.decode([t]): v for t, v in zip(ids.tolist(), values.tolist())}, abs=1e-4)
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(4)]
    chunks = list(client.completions.create(model="a", prompt=prompt, max_tokens=4, temperature=0, logprobs=3,
                                            stream=True, extra_body={"min_tokens": 4}))  # fmt: skip
    streamed = [x for c in chunks if c.choices and c.choices[0].logprobs for x in c.choices[0].logprobs.token_logprobs]
    assert streamed == pytest.approx(logprobs.token_logprobs, abs=1e-6)


@pytest.mark.integration
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_puts_the_prompt_and_its_logprobs_first_the_first_null(served, client, stream, max_tokens):
    """What lm-evaluation-harness sends to score a continuation: echo, logprobs=1, max_tokens 0 or 1."""
    _, reference, tokenizer = served
    prompts = [ids_of(tokenizer, p) for p in PROMPTS]
    answer = client.completions.create(model="a", prompt=prompts, max_tokens=max_tokens, temperature=0, logprobs=1,
                                       echo=True, stream=stream)  # fmt: skip
    if stream:
        parts: dict[int, list] = {0: [], 1: []}
        for chunk in answer:
            for choice in chunk.choices:
                parts[choice.index].append(choice)
        texts = {i: "".join(c.text for c in p) for i, p in parts.items()}
        scored = {i: [x for c in p if c.logprobs for x in c.logprobs.token_logprobs] for i, p in parts.items()}
        tops = {i: [x for c in p if c.logprobs for x in c.logprobs.top_logprobs] for i, p in parts.items()}
    else:
        texts = {c.index: c.text for c in answer.choices}
        scored = {c.index: c.logprobs.token_logprobs for c in answer.choices}
        tops = {c.index: c.logprobs.top_logprobs for c in answer.choices}
    for i, prompt in enumerate(prompts):
        assert texts[i].startswith(tokenizer.decode(prompt))
        expected = logprobs_of(reference, prompt)
        assert scored[i][0] is None and tops[i][0] is None
        assert len(scored[i]) == len(prompt) + max_tokens
        want = [expected[j - 1, prompt[j]].item() for j in range(1, len(prompt))]
        assert scored[i][1 : len(prompt)] == pytest.approx(want, abs=1e-4)
        best = expected[: len(prompt) - 1].max(-1).values.tolist()  # lm-eval's is_greedy reads max(top.values())
        assert [max(t.values()) for t in tops[i][1 : len(prompt)]] == pytest.approx(best, abs=1e-4)


@pytest.mark.integration
def test_chat_logprobs_come_as_content_with_top_logprobs(served, client):
    _, reference, tokenizer = served
    answer = client.chat.completions.create(model="a", messages=[{"role": "user", "content": "the movie was"}], n=2,
                                            max_tokens=3, temperature=0, logprobs=True, top_logprobs=2,
                                            extra_body={"min_tokens": 3})  # fmt: skip
    assert [c.index for c in answer.choices] == [0, 1] and answer.choices[0].logprobs == answer.choices[1].logprobs
    text = tokenizer.apply_chat_template([{"role": "user", "content": "the movie was"}], tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    generated = greedy(reference, prompt, 3)
    expected = logprobs_of(reference, prompt + generated)[len(prompt) - 1 : -1]
    content = answer.choices[0].logprobs.content
    assert [c.token for c in content] == [tokenizer.decode([t]) for t in generated]
    assert [c.logprob for c in content] == pytest.approx(
        [expected[i, t].item() for i, t in enumerate(generated)], abs=1e-4
    )
    assert content[0].bytes == list(content[0].token.encode())
    assert [[t.token for t in c.top_logprobs] for c in content] == [
        [tokenizer.decode([t]) for t in expected[i].topk(2).indices.tolist()] for i in range(3)
    ]


@torch.no_grad()
def greedy_with_penalties(reference, tokens: list[int], count: int, presence: float, frequency: float) -> list[int]:
    """OpenAI's presence and frequency penalties, by hand (transformers has no processor for them)."""
    generated: list[int] = []
    for _ in range(count):
        logits = reference(torch.tensor([tokens + generated])).logits[0, -1].float()
        for token in set(generated):
            logits[token] -= presence + frequency * generated.count(token)
        logits[reference.config.eos_token_id] = float("-inf")
        generated.append(int(logits.argmax()))
    return generated


@pytest.mark.integration
@pytest.mark.parametrize("stream", [False, True])
def test_penalties_and_logit_bias_equal_transformers_and_a_torch_reference(served, client, stream):
    _, reference, tokenizer = served
    prompt = ids_of(tokenizer, PROMPTS[1])

    def ask(**fields) -> list[int]:
        """The generated token ids, read from the answer's ``logprobs.tokens`` (the text drops special tokens)."""
        answer = client.completions.create(model="a", prompt=prompt, max_tokens=8, temperature=0, stream=stream, logprobs=0,
                                           extra_body={"min_tokens": 8, **fields.pop("extra", {})}, **fields)  # fmt: skip
        chunks = [c.choices[0] for c in answer if c.choices] if stream else answer.choices
        return tokenizer.convert_tokens_to_ids([t for c in chunks if c.logprobs for t in c.logprobs.tokens])

    plain = greedy(reference, prompt, 8)
    assert ask() == plain
    assert ask(extra={"repetition_penalty": 1.8}) == greedy(reference, prompt, 8, repetition_penalty=1.8)
    banned, favoured = plain[0], tokenizer.convert_tokens_to_ids("cars")
    bias = {str(banned): -100, str(favoured): 5.0}
    assert ask(logit_bias=bias) == greedy(reference, prompt, 8, sequence_bias={(banned,): -100.0, (favoured,): 5.0})
    for presence, frequency in ((1.5, 0.0), (0.0, 1.2), (-0.5, 0.7)):
        penalised = ask(presence_penalty=presence, frequency_penalty=frequency)
        assert penalised == greedy_with_penalties(reference, prompt, 8, presence, frequency)


@pytest.mark.integration
def test_bad_fields_are_400s_naming_the_field(served, client, tiny_llama):
    cases = [
        (dict(prompt=[[5, 99999]]), "prompt"),
        (dict(prompt="the movie", n=2, best_of=3), "best_of"),
        (dict(prompt="the movie", logit_bias={"99999": 1}), "logit_bias"),
        (dict(prompt="the movie", extra_body={"use_beam_search": True}), "use_beam_search"),
        (dict(prompt="the movie", extra_body={"stop_token_ids": [6]}), "stop_token_ids"),
        (dict(prompt="the movie", max_tokens=0), "max_tokens"),
        (dict(prompt=["the movie", "i love"], n=64), "n"),  # 128 rows, over max_waiting
    ]
    for fields, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            client.completions.create(model="a", **{"max_tokens": 2, **fields})
        assert refused.value.body["param"] == param, refused.value.body
    until = ["\n\n", "Q:", "</s>", "<|im_end|>", "Question:", "boring"]  # lm-eval: a task's until and the EOS text
    assert client.completions.create(model="a", prompt="the movie", max_tokens=2, stop=until).choices[0].finish_reason


@pytest.mark.integration
def test_tokenize_detokenize_and_tokenizer_info_like_vllm(served):
    server, _, tokenizer = served
    url = server.url
    tokens = httpx.post(url + "/tokenize", json={"model": "a", "prompt": "the movie was"}).json()
    assert tokens == {
        "count": 3,
        "max_model_len": 128,
        "tokens": ids_of(tokenizer, "the movie was"),
        "token_strs": None,
    }
    chat = httpx.post(url + "/tokenize", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}).json()
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat["tokens"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert httpx.post(url + "/detokenize", json={"model": "a", "tokens": tokens["tokens"]}).json() == {
        "prompt": "the movie was"
    }
    info = httpx.get(url + "/tokenizer_info").json()
    assert info["tokenizer_class"] == type(tokenizer).__name__ and info["eos_token"] == "</s>"
    assert info["chat_template"] == CHAT_TEMPLATE and info["model_max_length"] == tokenizer.model_max_length
    missing = httpx.post(url + "/tokenize", json={"model": "nope", "prompt": "x"})
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]
    out_of_vocabulary = httpx.post(url + "/detokenize", json={"tokens": [99999]})
    assert out_of_vocabulary.status_code == 400 and out_of_vocabulary.json()["error"]["param"] == "tokens"


def test_static_batching_refuses_what_it_cannot_do_and_answers_several_prompts(tiny_llama, tmp_path):
    registry = Registry(tmp_path / "registry")
    base = load_base(tiny_llama)
    pool = AdapterPool(base, slots=2, max_rank=4, registry=registry)
    settings = ServerSettings(batching="static", max_wait_ms=10, max_new_tokens=8, model_name="tiny")
    with TestClient(create_app(pool, settings)) as http:
        body = {"model": "tiny", "prompt": ["the movie", "i love"], "max_tokens": 3, "temperature": 0}
        several = http.post("/v1/completions", json=body)
        assert [c["index"] for c in several.json()["choices"]] == [0, 1], several.text
        for field, value in (("logprobs", 1), ("n", 2), ("echo", True), ("presence_penalty", 0.5)):
            refused = http.post("/v1/completions", json={**body, field: value})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == field
            assert "--batching continuous" in refused.json()["error"]["message"]
    pool.close()
