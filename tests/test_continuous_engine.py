"""The continuous-batching engine on a tiny Llama: each row's output equals the request served alone while other
rows for other adapters join and leave around it; short requests that arrive during a long one finish first;
a long prompt is prefilled a chunk per step; cancelled rows are freed; stop strings and min_tokens hold."""

from __future__ import annotations

import pytest
import torch
from test_runtime import push_random_adapter

from adapterhub.base import load_base
from adapterhub.runtime import AdapterPool, SamplingParams, generate
from adapterhub.runtime.continuous import ContinuousEngine, EngineRequest
from adapterhub.runtime.kv_rows import RowCache

PROMPTS = ["the movie was great", "i hate this car very much and", "good", "we drive fast on the road", "bad film",
           "this is not a very good film but i love it", "so", "they love fast cars"]  # fmt: skip


@pytest.fixture
def pool(tiny_llama, tmp_path):
    base = load_base(tiny_llama)
    for i in range(3):
        push_random_adapter(base, f"a{i}", {"r": 4}, tmp_path, seed=i)
    pool = AdapterPool(base, slots=2, max_rank=4)
    yield pool
    pool.close()


def greedy(n: int, **extra) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, min_tokens=n, **extra)


def run(engine: ContinuousEngine, arrivals: dict[int, list[EngineRequest]]) -> tuple[dict[int, str], list[int], int]:
    """Step until done, submitting ``arrivals[step]`` at that step; each sequence's text, the finish order, steps."""
    texts: dict[int, str] = {}
    finished: list[int] = []
    step = 0
    while engine.has_work() or any(k >= step for k in arrivals):
        for s in arrivals.get(step, []):
            engine.submit(s)
        for s, event in engine.step():
            assert event.error is None, event.error
            texts[s.id] = texts.get(s.id, "") + event.text
            if event.finish:
                finished.append(s.id)
        step += 1
    return texts, finished, step


def alone(pool, prompt, adapter, n) -> str:
    return generate(pool, [prompt], [adapter], greedy(n))[0].text


def test_each_row_equals_its_request_alone_while_others_join_and_leave(pool):
    tokenizer = pool.base.tokenizer
    adapters = ["a0@1", "a1@1", None, "a2@1", "a0@1", "a1@1", None, "a2@1"]  # 3 adapters on 2 slots: some must wait
    lengths = [12, 5, 9, 7, 20, 3, 15, 6]
    sequences = [EngineRequest(tokenizer(p)["input_ids"], a, greedy(n)) for p, a, n in zip(PROMPTS, adapters, lengths)]
    engine = ContinuousEngine(pool, max_running=3, prefill_chunk=4)  # long prompts take several steps to prefill
    texts, finished, _ = run(engine, {0: sequences[:2], 2: sequences[2:4], 5: sequences[4:6], 9: sequences[6:]})
    assert sorted(finished) == sorted(s.id for s in sequences)
    for s, prompt, adapter, n in zip(sequences, PROMPTS, adapters, lengths):
        assert len(s.generated) == n
        assert texts[s.id] == alone(pool, prompt, adapter, n), (prompt, adapter)
    assert engine.cache.rows == 0 and not engine.running and not engine.prefilling


def test_short_requests_arriving_during_a_long_one_finish_first(pool):
    tokenizer = pool.base.tokenizer
    long = EngineRequest(tokenizer(PROMPTS[0])["input_ids"], "a0@1", greedy(60))
    shorts = [
        EngineRequest(tokenizer(p)["input_ids"], a, greedy(3)) for p, a in zip(PROMPTS[1:4], ["a1@1", None, "a0@1"])
    ]
    _, finished, _ = run(ContinuousEngine(pool, max_running=4), {0: [long], 5: shorts})
    assert finished[-1] == long.id and set(finished[:3]) == {s.id for s in shorts}


def test_a_long_prompt_is_prefilled_one_chunk_per_step_while_running_rows_keep_decoding(pool):
    tokenizer = pool.base.tokenizer
    running = EngineRequest(tokenizer(PROMPTS[1])["input_ids"], "a0@1", greedy(30))
    newcomer = EngineRequest(tokenizer(" ".join([PROMPTS[5]] * 4))["input_ids"], "a1@1", greedy(2))
    engine = ContinuousEngine(pool, max_running=4, prefill_chunk=8)
    engine.submit(running)
    engine.step()
    engine.submit(newcomer)
    steps_to_prefill = 0
    while newcomer.prefilled < len(newcomer.prompt):
        before = len(running.generated)
        engine.step()
        steps_to_prefill += 1
        assert len(running.generated) == before + 1  # the running row got its token at every step
        assert newcomer.prefilled <= steps_to_prefill * 8
    assert steps_to_prefill == -(-len(newcomer.prompt) // 8) > 1


def test_a_cancelled_row_is_freed_at_the_next_step_and_the_others_go_on(pool):
    tokenizer = pool.base.tokenizer
    keep, drop = (
        EngineRequest(tokenizer(p)["input_ids"], a, greedy(10)) for p, a in ((PROMPTS[0], "a0@1"), (PROMPTS[2], "a1@1"))
    )
    engine = ContinuousEngine(pool)
    engine.submit(keep)
    engine.submit(drop)
    for _ in range(3):
        engine.step()
    assert engine.cache.rows == 2
    drop.cancel()
    events = engine.step()
    assert (drop, "abort") in [(s, e.finish) for s, e in events]
    assert engine.cache.rows == 1 and engine.running == [keep]
    texts, _, _ = run(engine, {})
    assert len(keep.generated) == 10 and keep.finished == "length"


def test_stop_strings_min_tokens_and_seeded_sampling(pool):
    tokenizer = pool.base.tokenizer
    prompt = tokenizer(PROMPTS[3])["input_ids"]
    reference = alone(pool, PROMPTS[3], "a2@1", 12)
    stop = reference.split()[3]  # a word the greedy text contains
    stopped = EngineRequest(prompt, "a2@1", greedy(12, stop=(stop,)))
    eos = pool.base.tokenizer.eos_token_id
    at_least = EngineRequest(prompt, None, SamplingParams(max_tokens=6, temperature=0, min_tokens=6))
    sampled = [
        EngineRequest(prompt, "a0@1", SamplingParams(max_tokens=8, temperature=1.3, top_p=0.9, seed=7))
        for _ in range(2)
    ]
    texts, _, _ = run(ContinuousEngine(pool), {0: [stopped, at_least, sampled[0]], 3: [sampled[1]]})
    assert texts[stopped.id] == reference[: reference.index(stop)] and stopped.finished == "stop"
    assert eos not in at_least.generated[:6] and len(at_least.generated) == 6
    assert sampled[0].generated == sampled[1].generated  # same seed, different neighbours and timing


def test_row_cache_pads_joins_and_trims():
    def layer_cache(length: int, value: float):
        from transformers import DynamicCache

        cache = DynamicCache()
        cache.update(torch.full((1, 2, length, 4), value), torch.full((1, 2, length, 4), -value), 0)
        return cache

    rows = RowCache()
    rows.join(layer_cache(3, 1.0), 3)
    rows.join(layer_cache(5, 2.0), 5)
    keys = rows.cache.layers[0].keys
    assert keys.shape == (2, 2, 5, 4) and keys[0, :, :2].abs().sum() == 0 and (keys[0, :, 2:] == 1).all()
    inputs = rows.step_inputs()
    assert inputs["attention_mask"].tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    assert inputs["position_ids"].tolist() == [[3], [5]]
    rows.keep([0])  # the longer row left: the padding nobody needs goes too
    assert rows.width == 3 and (rows.cache.layers[0].keys == 1).all()
