"""What the completions API asks of the engine, on a tiny Llama: log-probabilities equal to the model's own
log_softmax (generated and prompt tokens, chunked prefill, ``max_tokens`` 0), ``n`` rows sharing one prefill with
seeds ``seed + i``, penalties and logit bias, the same in the lane; and the registry is asked once per request,
never per decode step."""

from __future__ import annotations

import pytest
import torch
from test_continuous_engine import PROMPTS, greedy, pool, run  # noqa: F401 - pool is a fixture
from test_engine_lane import lane_pool  # noqa: F401 - a fixture

from adapterhub.runtime import SamplingParams, StaticPathUnsupported, generate
from adapterhub.runtime.continuous import ContinuousEngine, EngineRequest
from adapterhub.runtime.sampling import RowSampler


def forward_logprobs(pool, adapter, tokens: list[int]) -> torch.Tensor:
    """log_softmax of the model with ``adapter`` over ``tokens`` in one forward: (positions, vocabulary)."""
    with torch.inference_mode(), pool.activate([adapter]):
        return pool.base.model(torch.tensor([tokens])).logits[0].float().log_softmax(-1)


def events_of(engine, requests):
    """Every event of each request, in order, stepping until the engine is idle."""
    events = {r.id: [] for r in requests}
    for r in requests:
        engine.submit(r)
    while engine.has_work():
        for r, event in engine.step():
            assert event.error is None, event.error
            events[r.id].append(event)
    return events


def test_logprobs_of_generated_and_prompt_tokens_equal_the_models_log_softmax(pool):
    prompt = pool.base.tokenizer(PROMPTS[5])["input_ids"]
    params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True, logprobs=3, prompt_logprobs=2)
    request = EngineRequest(prompt, "a1@1", params)
    engine = ContinuousEngine(pool, prefill_chunk=4)  # the prompt is scored over several chunks
    events = events_of(engine, [request])[request.id]
    whole = forward_logprobs(pool, "a1@1", prompt + request.generated)
    scored = events[0].prompt_logprobs
    assert len(scored) == len(prompt) and scored[0] is None and all(e.prompt_logprobs is None for e in events[1:])
    for position, entry in enumerate(scored[1:], start=1):
        assert entry.token == prompt[position] and len(entry.top) == 2
        assert entry.logprob == pytest.approx(whole[position - 1, prompt[position]].item(), abs=1e-4)
    chosen = [lp for e in events for lp in e.logprobs]
    assert [lp.token for lp in chosen] == request.generated
    for i, entry in enumerate(chosen):
        row = whole[len(prompt) - 1 + i]
        assert entry.logprob == pytest.approx(row[entry.token].item(), abs=1e-4)
        assert [t for t, _ in entry.top] == row.topk(3).indices.tolist() and entry.top[0][0] == entry.token  # greedy


def test_max_tokens_zero_with_prompt_logprobs_ends_after_the_prefill(pool):
    prompt = pool.base.tokenizer(PROMPTS[0])["input_ids"]
    request = EngineRequest(prompt, None, SamplingParams(max_tokens=0, prompt_logprobs=0))
    [event] = events_of(ContinuousEngine(pool), [request])[request.id]
    assert (event.finish, event.tokens, event.text, request.generated) == ("length", 0, "", [])
    whole = forward_logprobs(pool, None, prompt)
    assert [e.logprob for e in event.prompt_logprobs[1:]] == pytest.approx(
        [whole[i - 1, prompt[i]].item() for i in range(1, len(prompt))], abs=1e-4
    )
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)


def test_n_rows_share_one_prefill_and_each_draws_from_seed_plus_its_index(pool):
    prompt = pool.base.tokenizer(PROMPTS[3])["input_ids"]
    sampled = SamplingParams(max_tokens=8, temperature=1.5, seed=7, ignore_eos=True)
    rows = [EngineRequest(prompt, "a2@1", sampled) for _ in range(3)]
    engine = ContinuousEngine(pool)
    engine.submit_many(rows)
    engine.step()
    assert not engine.waiting and not engine.prefilling and len(engine.running) == 3  # one prefill, three rows
    run(engine, {})
    for i, row in enumerate(rows):
        alone = EngineRequest(
            prompt, "a2@1", SamplingParams(max_tokens=8, temperature=1.5, seed=7 + i, ignore_eos=True)
        )
        run(engine, {0: [alone]})
        assert row.generated == alone.generated
    assert len({tuple(r.generated) for r in rows}) == 3


def test_repetition_penalty_and_logit_bias_match_transformers_generate(pool):
    prompt = pool.base.tokenizer(PROMPTS[1])["input_ids"]
    for params in (greedy(8, repetition_penalty=1.8), greedy(8, logit_bias=((17, 4.0), (9, -100.0)))):
        request = EngineRequest(prompt, "a0@1", params)
        run(ContinuousEngine(pool), {0: [request]})
        assert request.generated == generate(pool, [prompt], ["a0@1"], params)[0].token_ids, params


def test_presence_and_frequency_penalties_lower_tokens_already_generated():
    logits = torch.tensor([0.0, 3.0, 2.4, 1.0])
    plain = RowSampler(SamplingParams(temperature=0))
    assert plain.pick(logits, [1, 1])[0] == 1
    assert RowSampler(SamplingParams(temperature=0, presence_penalty=0.7)).pick(logits, [1, 1])[0] == 2
    frequency = RowSampler(SamplingParams(temperature=0, frequency_penalty=0.5))
    assert frequency.pick(logits, [1])[0] == 1 and frequency.pick(logits, [1, 1])[0] == 2


def test_a_static_batch_cuts_each_row_at_its_own_length_and_stops(pool):
    prompts = [pool.base.tokenizer(p)["input_ids"] for p in PROMPTS[:3]]
    rows = [
        SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, stop=stop)
        for n, stop in ((3, ()), (9, ("e",)), (6, ()))
    ]
    together = generate(pool, prompts, ["a0@1", None, "a1@1"], rows)
    alone = [generate(pool, [p], [a], r)[0] for p, a, r in zip(prompts, ["a0@1", None, "a1@1"], rows)]
    assert [(g.text, g.tokens, g.finish) for g in together] == [(g.text, g.tokens, g.finish) for g in alone]
    assert [g.tokens for g in together][::2] == [3, 6]
    with pytest.raises(ValueError, match="differing only in max_tokens and stop"):
        generate(pool, prompts[:2], [None, None], [greedy(3), SamplingParams(max_tokens=3, seed=1)])


def test_the_static_path_refuses_what_one_generate_call_cannot_do(pool):
    for params in (greedy(2, logprobs=1), SamplingParams(max_tokens=2, presence_penalty=0.5)):
        with pytest.raises(StaticPathUnsupported, match="batching static"):
            generate(pool, ["good"], [None], params)


def test_lane_rows_give_logprobs_and_prompt_logprobs(lane_pool):
    prompt = lane_pool.base.tokenizer("the movie was great")["input_ids"]
    request = EngineRequest(prompt, "soft@1", greedy(3, logprobs=1, prompt_logprobs=1))
    events = events_of(ContinuousEngine(lane_pool), [request])[request.id]
    with lane_pool.peft_adapter("soft@1") as model, torch.inference_mode():
        whole = model(input_ids=torch.tensor([prompt + request.generated])).logits[0, -len(prompt) - 3 :]
    whole = whole.float().log_softmax(-1)  # (prompt + generated, vocabulary), the virtual tokens' positions dropped
    assert events[0].prompt_logprobs[0] is None and len(events[0].prompt_logprobs) == len(prompt)
    assert [e.logprob for e in events[0].prompt_logprobs[1:]] == pytest.approx(
        [whole[i - 1, prompt[i]].item() for i in range(1, len(prompt))], abs=1e-4
    )
    chosen = [lp for e in events for lp in e.logprobs]
    assert [lp.logprob for lp in chosen] == pytest.approx(
        [whole[len(prompt) - 1 + i, t].item() for i, t in enumerate(request.generated)], abs=1e-4
    )


def test_the_registry_is_asked_once_per_request_while_8_requests_over_3_adapters_decode_32_steps(pool, monkeypatch):
    registry, asked = pool.registry, []
    for name in ("resolve", "load", "load_record"):
        real = getattr(registry, name)
        monkeypatch.setattr(
            registry, name, lambda *a, _real=real, _name=name, **k: asked.append(_name) or _real(*a, **k)
        )
    for name in ("a0", "a1", "a2"):
        pool.load(name)  # loading is an explicit call, before the requests
    registry.tag("a1@1", "latest")
    asked.clear()
    tokenizer, refs = pool.base.tokenizer, ["a0", "a1:latest", "a2", "a0@1", "a1", "a2", "a0", "a1"]
    engine = ContinuousEngine(pool, max_running=8)
    requests = [EngineRequest(tokenizer(p)["input_ids"], pool.key_of(ref), greedy(32)) for p, ref in zip(PROMPTS, refs)]
    at_the_edge = len(asked)
    _, finished, steps = run(engine, {0: requests})
    assert len(finished) == 8 and steps >= 32 and all(len(r.generated) == 32 for r in requests)
    assert at_the_edge <= 8 and len(asked) == at_the_edge  # none at all while decoding
