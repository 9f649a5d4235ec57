"""Prefix reuse in serving: 8 adapters, every request starting with its adapter's system prompt, with reuse and without.

The prefix case of the `serving` suite (issue 28, item 4), a suite of its own so that it runs alone in minutes (the
whole `serving` suite takes about 20). Two `adapterhub serve --batching continuous` servers run as subprocesses on
loopback on the serving suite's base and 8 rank-16 LoRAs: one with `--prefix-cache-mb 256` (the default), one
with `--prefix-cache-mb 0`. Each adapter has its own system prompt (`SYSTEM_TOKENS` one-token words, seeded); every
request is that prompt followed by the serving suite's draws (shorter outputs: the figure here is the time to
first token). Each server first gets one request per adapter, untimed, as a server that has been running a while
has seen each system prompt; then both get the same seeded Poisson load at `RATE` requests/s, taking turns.
Recorded per server: the serving suite's figures (TTFT p50/p99, ITL, tokens/s); the target is TTFT p50 with reuse
≤ 0.3x without.
"""

from __future__ import annotations

import dataclasses
import random

from benchmarks import loadgen, models
from benchmarks.harness import Context
from benchmarks.suites import serving

REQUIRES = serving.REQUIRES
DEVICES = serving.DEVICES
REUSE, NO_REUSE = "adapterhub prefix reuse", "adapterhub no prefix reuse"
SYSTEM_TOKENS = 256
RATE = 0.25  # requests/s: below the no-reuse server's capacity, so TTFT is mostly prefill, not queueing
FULL = dict(system_tokens=SYSTEM_TOKENS, duration_s=80.0, drain_s=60.0, prompt_tokens=(16, 64), output_tokens=(8, 32))
# the quick run's tiny Llama has 128 positions
QUICK = dict(system_tokens=48, duration_s=12.0, drain_s=10.0, prompt_tokens=(8, 24), output_tokens=(4, 8))


def _system(refs: list[str], words: loadgen.PromptWords, tokens: int, seed: int) -> dict[str, str]:
    """Each adapter's system prompt: `tokens` one-token words, its own draw."""
    return {ref: words.prompt(random.Random(f"{seed}-{ref}"), tokens) for ref in refs}


def _servers(path: str, registry_root, refs: list[str], logs) -> list[serving.Server]:
    ours = serving.servers(path, registry_root, refs, logs)[0]  # the continuous server's command
    result = []
    for impl, flag in ((REUSE, ["--prefix-cache-mb", "256"]), (NO_REUSE, ["--prefix-cache-mb", "0"])):
        port = serving._free_port()
        command = [str(port) if i and ours.command[i - 1] == "--port" else arg for i, arg in enumerate(ours.command)]
        what = f"adapterhub serve --batching continuous {' '.join(flag)}"
        result.append(serving.Server(impl, what, [*command, *flag], port, logs / f"{impl.replace(' ', '-')}.log"))
    return result


def run(ctx: Context) -> None:
    from transformers import AutoTokenizer

    from adapterhub_registry import Registry

    serving._require_batching_option()
    size = QUICK if ctx.quick else FULL
    path, label = models.model_for(ctx)
    with ctx.scratch("serving_prefix") as root:
        registry = Registry(root / "registry")
        refs = serving.push_adapters(path, root, registry)
        registry.close()
        tokenizer = AutoTokenizer.from_pretrained(models.transformers_dir(path))
        words = loadgen.PromptWords(tokenizer)
        count_tokens = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
        system = _system(refs, words, size["system_tokens"], ctx.seed)
        shape = loadgen.LoadShape(RATE, size["duration_s"], tuple(refs), size["prompt_tokens"], size["output_tokens"],
                                  seed=ctx.seed)  # fmt: skip
        planned = [
            dataclasses.replace(p, prompt=system[p.model] + p.prompt, prompt_tokens=size["system_tokens"] + p.prompt_tokens)
            for p in loadgen.schedule(shape, words)
        ]  # fmt: skip
        systems = _servers(path, root / "registry", refs, root)
        try:
            serving.start(systems, refs, serving.QUICK.startup_s if ctx.quick else serving.FULL.startup_s)
            for server in systems:
                for ref in refs:  # each system prompt seen once, as on a server that has been running a while
                    loadgen.complete(server.url, ref, system[ref] + " hello", 1)
            ctx.settings.update(model=label, adapters=len(refs), rate_req_per_s=RATE, requests=len(planned), **size,
                                commands={s.impl: " ".join(s.command) for s in systems})  # fmt: skip
            for server in systems:
                results = loadgen.run_load(server.url, planned, drain_s=size["drain_s"], seed=ctx.seed)
                serving._settle(server, refs[0])
                serving._record(ctx, server, RATE, results, count_tokens)
        finally:
            for server in systems:
                server.stop()
    reuse, plain = (s.summaries[RATE] for s in systems)
    serving._ratio_check(ctx, f"TTFT p50 with prefix reuse / without ({len(refs)} adapters, each request after its "
                         f"adapter's {size['system_tokens']}-token system prompt)", reuse.ttft_p50_ms, plain.ttft_p50_ms, 0.3)  # fmt: skip
