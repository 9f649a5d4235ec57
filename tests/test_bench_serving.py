"""The serving benchmark's load generator (benchmarks/loadgen.py) against its transformers + peft baseline server
(benchmarks/serving_baseline.py) on a tiny random Llama over loopback: the schedule is seeded, every request gets
exactly the tokens it asked for, and the summaries agree with the per-request records."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from live_server import LiveServer
from test_runtime import push_random_adapter
from transformers import AutoTokenizer

from adapterhub.base import load_base
from adapterhub_registry import Registry
from benchmarks import loadgen
from benchmarks.serving_baseline import Limits, create_app, load_model

REFS = ["a0", "a1", "a2"]


@pytest.fixture(scope="module")
def words(tiny_llama) -> loadgen.PromptWords:
    return loadgen.PromptWords(AutoTokenizer.from_pretrained(tiny_llama))


@pytest.fixture(scope="module")
def baseline(tiny_llama, tmp_path_factory):
    """The baseline app serving three registry adapters on tiny_llama, on a free loopback port; (url, tokenizer)."""
    root = tmp_path_factory.mktemp("serving")
    base = load_base(tiny_llama)
    with pytest.MonkeyPatch.context() as patch:  # module scope: the per-test ADAPTERHUB_HOME is not set yet
        patch.setenv("ADAPTERHUB_HOME", str(root))
        for seed, ref in enumerate(REFS):
            push_random_adapter(base, ref, {"r": 4}, root, seed)
        model, tokenizer, names = load_model(str(tiny_llama), Registry().root, REFS)
    app = create_app(model, tokenizer, {ref: names[ref] for ref in REFS}, Path(tiny_llama).name, Limits(64, 32))
    server = LiveServer(app)
    yield server.url, tokenizer
    server.stop()


def test_poisson_schedule_is_seeded_and_the_same_whatever_the_number_of_adapters(words, tiny_llama):
    shape = loadgen.LoadShape(rate=50.0, duration_s=20.0, adapters=tuple(f"a{i}" for i in range(8)), seed=3)
    first, again = loadgen.schedule(shape, words), loadgen.schedule(shape, words)
    assert first == again
    assert loadgen.schedule(loadgen.LoadShape(50.0, 20.0, shape.adapters, seed=4), words) != first
    assert 850 <= len(first) <= 1150  # 1,000 expected; a Poisson count's sd is ~32
    assert all(0 < a.at_s < b.at_s < 20.0 for a, b in zip(first, first[1:]))
    assert {p.model for p in first} == set(shape.adapters)
    assert min(p.prompt_tokens for p in first) == 16 and max(p.prompt_tokens for p in first) == 128
    assert min(p.max_tokens for p in first) == 8 and max(p.max_tokens for p in first) == 128
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    assert all(len(tokenizer.encode(p.prompt, add_special_tokens=False)) == p.prompt_tokens for p in first[:50])
    one = loadgen.schedule(loadgen.LoadShape(50.0, 20.0, ("a0",), seed=3), words)
    assert [(p.at_s, p.prompt, p.max_tokens) for p in one] == [(p.at_s, p.prompt, p.max_tokens) for p in first]


@pytest.mark.integration
def test_load_generator_streams_every_request_and_summarises_what_it_saw(baseline, words):
    url, tokenizer = baseline
    shape = loadgen.LoadShape(
        rate=12.0, duration_s=1.0, adapters=tuple(REFS), prompt_tokens=(4, 24), output_tokens=(2, 8), seed=0
    )
    planned = loadgen.schedule(shape, words)
    results = loadgen.run_load(url, planned, drain_s=30.0)
    assert [r.error for r in results] == [None] * len(planned)
    assert not any(r.cancelled for r in results)
    assert [r.completion_tokens for r in results] == [p.max_tokens for p in planned]
    assert all(r.prompt_tokens >= p.prompt_tokens for r, p in zip(results, planned))  # plus a BOS token, if any
    assert all(0 <= r.ttft_s <= r.end_s - r.sent_s for r in results)
    assert all(r.sent_s >= r.planned.at_s for r in results)
    count = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    # A random model also makes special tokens, which stream as no text: the chunks carry at most the usage count.
    assert all(0 < sum(r.chunk_tokens(count)) <= r.completion_tokens for r in results)
    summary = loadgen.summarize(results, count)
    assert (summary.requests, summary.completed, summary.errors, summary.cancelled) == (
        len(planned),
        len(planned),
        0,
        0,
    )
    assert summary.output_tokens == sum(p.max_tokens for p in planned)
    assert summary.output_tokens_per_s == pytest.approx(summary.output_tokens / summary.wall_s)
    assert 0 < summary.ttft_p50_ms <= summary.ttft_p99_ms <= summary.latency_p99_ms
    assert 0 <= summary.itl_p50_ms <= summary.itl_p99_ms


def test_short_while_long_counts_short_requests_sent_during_a_long_one():
    make = lambda index, tokens, sent, end: loadgen.RequestResult(  # noqa: E731
        loadgen.PlannedRequest(index, sent, "a0", " x", 1, tokens), sent_s=sent, end_s=end
    )
    long_one = make(0, loadgen.LONG_MIN_TOKENS, 0.0, 10.0)
    inside, after = make(1, loadgen.SHORT_MAX_TOKENS, 5.0, 6.0), make(2, 8, 10.0, 11.0)
    middle = make(3, loadgen.SHORT_MAX_TOKENS + 1, 5.0, 7.0)  # neither short nor long
    assert loadgen.short_while_long([long_one, inside, after, middle]) == [inside]


@pytest.mark.integration
def test_baseline_answers_an_unknown_model_with_an_openai_error(baseline):
    url, _ = baseline
    answer = httpx.post(
        url + "/v1/completions", json={"model": "nope", "prompt": "the movie", "max_tokens": 2}, timeout=30
    )
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["param"] == "model" and "'nope' is not served here" in error["message"] and "a0" in error["message"]
    good = httpx.post(
        url + "/v1/completions",
        json={"model": "a1", "prompt": "the movie", "max_tokens": 3, "ignore_eos": True},
        timeout=30,
    )
    assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] == 3
