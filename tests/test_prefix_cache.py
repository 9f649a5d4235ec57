"""Prefix reuse in the continuous engine on a tiny Llama: requests sharing a long prefix, over 2 adapters, give the
same greedy tokens with and without reuse; a tag moved to a new version never reuses the old version's entries;
under a tiny bound blocks are evicted and the outputs stay the same."""

from __future__ import annotations

import random

import torch
from test_continuous_engine import greedy, pool, run  # noqa: F401  (pool is a fixture)
from test_runtime import push_random_adapter
from transformers import DynamicCache

from adapterhub.runtime.continuous import ContinuousEngine, EngineRequest
from adapterhub.runtime.prefix_cache import BLOCK, PrefixCache

rng = random.Random(0)
PREFIX = [rng.randrange(7, 43) for _ in range(3 * BLOCK + 5)]  # 3 whole blocks and a part: word ids, no specials
SUFFIXES = [[rng.randrange(7, 43) for _ in range(n)] for n in (3, 7, 1, 12, 4, 9)]


def outputs(pool, prompts_adapters, prefix_cache_mb: float) -> tuple[list[str], ContinuousEngine]:
    """Each request's greedy text, one arriving per step (so each can find the ones before it cached)."""
    engine = ContinuousEngine(pool, max_running=4, prefill_chunk=24, prefix_cache_mb=prefix_cache_mb)
    requests = [EngineRequest(prompt, adapter, greedy(6)) for prompt, adapter in prompts_adapters]
    texts, _, _ = run(engine, {3 * i: [r] for i, r in enumerate(requests)})
    return [texts[r.id] for r in requests], engine


def test_requests_sharing_a_prefix_over_two_adapters_equal_the_uncached_engine(pool):
    work = [(PREFIX + suffix, f"a{i % 2}@1") for i, suffix in enumerate(SUFFIXES)] + [(PREFIX, None), (PREFIX, None)]
    cached, engine = outputs(pool, work, prefix_cache_mb=16)
    plain, _ = outputs(pool, work, prefix_cache_mb=0)
    assert cached == plain
    # a0 and a1 each reuse their own 3 blocks after their first request, the base its own after its first
    assert engine.prefixes.hits == 2 * 2 + 1
    assert engine.prefixes.reused_tokens == 5 * 3 * BLOCK


def test_a_prompt_of_whole_blocks_leaves_its_last_token_to_prefill():
    cache = PrefixCache(1 << 20)
    prompt = PREFIX[: 2 * BLOCK]
    kv = DynamicCache()
    kv.update(torch.randn(1, 2, len(prompt), 8), torch.randn(1, 2, len(prompt), 8), 0)
    cache.insert("a@1", prompt, kv)
    assert len(cache) == 2
    assert cache.lookup("a@1", prompt)[0] == BLOCK  # the second block holds the last token: it is prefilled again
    assert cache.lookup("a@1", prompt + [9])[0] == 2 * BLOCK
    assert cache.lookup("a@2", prompt + [9]) == (0, None)  # another version: another key
    assert cache.lookup(None, prompt + [9]) == (0, None)


def test_a_tag_moved_to_a_new_version_does_not_reuse_the_old_versions_entries(pool, tmp_path):
    engine = ContinuousEngine(pool, max_running=4, prefill_chunk=64, prefix_cache_mb=16)
    prompt = PREFIX + SUFFIXES[0]
    run(engine, {0: [EngineRequest(prompt, "a0@1", greedy(6))]})
    record = push_random_adapter(pool.base, "a0", {"r": 4}, tmp_path / "v2", seed=7)  # a0's tag moves on
    new = pool.key_of("a0")
    assert new == record.ref != "a0@1"
    texts, _, _ = run(engine, {0: [second := EngineRequest(prompt, new, greedy(6))]})
    assert engine.prefixes.hits == 0
    plain, _ = outputs(pool, [(prompt, new)], prefix_cache_mb=0)
    assert texts[second.id] == plain[0]


def test_a_tiny_bound_evicts_least_recently_used_blocks_and_outputs_stay_equal(pool):
    # one block of the tiny Llama: 2 layers x (keys + values) x 2 kv heads x 16 columns x 16 dims x 4 bytes
    block_bytes = 2 * 2 * 2 * BLOCK * 16 * 4
    work = [(PREFIX + suffix, "a0@1") for suffix in SUFFIXES[:4]]
    cached, engine = outputs(pool, work, prefix_cache_mb=2.5 * block_bytes / 2**20)  # room for 2 blocks
    plain, _ = outputs(pool, work, prefix_cache_mb=0)
    assert cached == plain
    assert len(engine.prefixes) == 2 and engine.prefixes.bytes <= engine.prefixes.max_bytes
    assert engine.prefixes.hits == 3  # the 2 first blocks stay (a chain is evicted from its end) and are reused
    assert engine.prefixes.reused_tokens == 3 * 2 * BLOCK


def test_prompt_logprobs_requests_prefill_their_whole_prompt(pool):
    engine = ContinuousEngine(pool, max_running=4, prefill_chunk=64, prefix_cache_mb=16)
    prompt = PREFIX + SUFFIXES[1]
    echo = EngineRequest(prompt, "a1@1", greedy(2, prompt_logprobs=1))
    run(engine, {0: [EngineRequest(prompt, "a1@1", greedy(2))], 3: [echo]})
    assert engine.prefixes.hits == 0
