"""Serving beside llama.cpp: adapterhub serve (float32 and nf4) and llama-server (Q4_1 GGUF), the same 8 LoRAs and load.

The CPU peer of the `serving` suite (issue 28, item 5). Three servers run as subprocesses on loopback, all alive for
the whole run: `adapterhub serve --batching continuous` on the float32 base (SmolLM2's GGUF dequantized, as the
`serving` suite runs it), the same with `--quantize nf4`, and llama.cpp's `llama-server` on the Q4_1 GGUF itself with
the 8 LoRAs converted by llama.cpp's own converter (`benchmarks/llama_cpp_baseline.py`; a request picks its adapter
with llama.cpp's per-request `lora` list). The load is the `serving` suite's: the same adapters, seeded Poisson
arrivals from the same generator, rates as the same fractions and multiples of the float32 server's probed capacity,
the same recorded figures. Each server's own capacity is probed as well (a burst, cut off), for the saturated
throughput of a server the rates do not saturate. Skipped with the reason when llama.cpp is not there.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import llama_cpp_baseline, loadgen, models
from benchmarks.harness import OURS, Context
from benchmarks.suites import SuiteUnavailable, serving

REQUIRES = {"httpx": "httpx", "fastapi": "fastapi", "uvicorn": "uvicorn", "bitsandbytes": "bitsandbytes"}
DEVICES = ("cpu",)  # llama-server is built for the CPU here; the other two are placed alike
NF4 = "adapterhub nf4"
LLAMA = "llama.cpp"
# llama.cpp's threads. One: its threads meet at a barrier after every op, so on a shared machine one thread
# descheduled stalls the other; measured here at load 4.7 on 2 cores, a SmolLM2 decode step took 155 ms with 2
# threads and 15 ms with 1. (Torch in our server takes its default, the machine's cores.)
THREADS = 1
ROWS = 16  # our server's --max-running default: the rows of its continuous batch, llama.cpp's slots
ROW_TOKENS = 768  # a slot's context: our server's --max-input-tokens 512 + --max-new-tokens 256
# The serving suite's rates and draws; shorter runs, so that this suite fits beside it on a shared machine.
FULL = serving.Size(duration_s=45.0, min_requests=10, max_duration_s=75.0, drain_s=30.0, probe_requests=8, probe_s=30.0,
                    rate_factors=serving.FULL.rate_factors)  # fmt: skip
QUICK = serving.QUICK


def _gguf_model(ctx: Context) -> Path:
    """The GGUF both sides run: --model when it is one, else SmolLM2's Q4_1 (also with --quick: llama.cpp cannot
    run the tiny random Llama of other suites' quick runs, which has no GGUF)."""
    if ctx.model:
        path = Path(ctx.model).expanduser()
        if path.suffix != ".gguf" or not path.is_file():
            raise SuiteUnavailable(
                f"--model {ctx.model!r}: this suite runs llama.cpp on the base, so it takes a .gguf file"
            )
        return path
    return models.smollm2_gguf()


def llama_system(llama, model: Path, registry, refs: list[str], root: Path, progress: bool = True) -> serving.Server:
    """llama-server for the serving suites: `refs` exported from `registry` as PEFT directories, converted by
    llama.cpp's converter, loaded with every `--lora`; `root` holds the files and the server's log."""
    from tqdm.auto import tqdm

    base_dir = models.transformers_dir(str(model))
    root.mkdir(parents=True, exist_ok=True)
    loras = []
    for ref in tqdm(refs, desc="llama.cpp: LoRA to GGUF", disable=not progress, leave=False):
        exported = registry.export_peft(ref, root / "peft" / ref)  # the PEFT directory a user would convert
        loras.append(llama_cpp_baseline.convert_lora(llama.source, exported, base_dir, root / f"{ref}.gguf"))
    port = serving._free_port()
    command = llama_cpp_baseline.server_command(llama, model, loras, port, threads=THREADS, parallel=ROWS,
                                                row_tokens=ROW_TOKENS)  # fmt: skip
    return serving.Server(LLAMA, f"llama.cpp's llama-server on the Q4_1 GGUF, {len(loras)} --lora (float32 GGUF), "
                          f"{ROWS} slots, per-request `lora`", command, port, root / "llama-server.log")  # fmt: skip


def body_for(server: serving.Server, refs: list[str]) -> loadgen.Body:
    """The request body a server of these suites takes: llama.cpp's adds its `lora` selection."""
    return llama_cpp_baseline.lora_body(refs) if server.impl == LLAMA else loadgen.request_body


def _nf4(ours: serving.Server, logs: Path) -> serving.Server:
    """The serving suite's continuous server (float32) with --quantize nf4, on a port of its own."""
    port = serving._free_port()
    command = [str(port) if i and ours.command[i - 1] == "--port" else arg for i, arg in enumerate(ours.command)]
    return serving.Server(NF4, "adapterhub serve --batching continuous --quantize nf4 (bitsandbytes)",
                          [*command, "--quantize", "nf4"], port, logs / "adapterhub-nf4.log")  # fmt: skip


def _greedy(server: serving.Server, body: loadgen.Body, ref: str, words) -> str:
    """16 greedy tokens for `ref` on a fixed prompt: the report says how often the servers' answers agree."""
    import httpx

    planned = loadgen.PlannedRequest(0, 0.0, ref, " " + " ".join(words.words[:24]), 24, 16)
    payload = {**body(planned, 0), "stream": False}
    payload.pop("stream_options")
    response = httpx.post(server.url + loadgen.COMPLETIONS, json=payload, timeout=600)
    response.raise_for_status()
    return response.json()["choices"][0]["text"]


def run(ctx: Context) -> None:
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from adapterhub_registry import Registry

    llama = llama_cpp_baseline.locate()
    size = QUICK if ctx.quick else FULL
    model = _gguf_model(ctx)
    with ctx.scratch("serving_llamacpp") as root:
        registry = Registry(root / "registry")
        refs = serving.push_adapters(str(model), root, registry)
        llama_server = llama_system(llama, model, registry, refs, root, ctx.progress)
        registry.close()
        ours = serving.servers(str(model), root / "registry", refs, root)[0]
        systems = [ours, _nf4(ours, root), llama_server]
        tokenizer = AutoTokenizer.from_pretrained(models.transformers_dir(str(model)))
        words = loadgen.PromptWords(tokenizer)
        count_tokens = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
        bodies = {s.impl: body_for(s, refs) for s in systems}
        try:
            serving.start(systems, refs, size.startup_s)
            answers = {s.impl: [_greedy(s, bodies[s.impl], ref, words) for ref in refs] for s in systems}
            shape = loadgen.LoadShape(rate=1.0, duration_s=size.duration_s, adapters=tuple(refs), seed=ctx.seed)
            probes = {}
            for server in systems:
                probes[server.impl] = serving.probe_capacity(
                    server, shape, size, words, count_tokens, bodies[server.impl]
                )
            capacity = probes[OURS][0]
            rates = size.rates(capacity)
            durations = [size.duration(rate) for rate in rates]
            ctx.settings.update(model=f"{model.name} (adapterhub: dequantized to float32, or nf4; llama.cpp: as is)",
                                adapters=len(refs), lora=serving.LORA, rates_req_per_s=rates, durations_s=durations,
                                drain_s=size.drain_s, prompt_tokens=shape.prompt_tokens, output_tokens=shape.output_tokens,
                                probe={"requests": size.probe_requests, "cut_off_s": size.probe_s},
                                llama_cpp=llama.version(), commands={s.impl: " ".join(s.command) for s in systems})  # fmt: skip
            with tqdm(total=len(rates) * len(systems), desc="serving_llamacpp: load runs", unit="run",
                      disable=not ctx.progress, leave=False) as bar:  # fmt: skip
                for i, (rate, duration) in enumerate(zip(rates, durations)):
                    planned = loadgen.schedule(loadgen.LoadShape(rate, duration, tuple(refs), seed=ctx.seed), words)
                    for server in systems if i % 2 == 0 else systems[::-1]:  # take turns, so load drift hits all alike
                        results = loadgen.run_load(
                            server.url, planned, drain_s=size.drain_s, seed=ctx.seed, body=bodies[server.impl]
                        )
                        serving._settle(server, refs[0])
                        serving._record(ctx, server, rate, results, count_tokens)
                        bar.update(1)
            memory = {s.impl: s.rss_mb() for s in systems}
        finally:
            for server in systems:
                server.stop()
    _report(ctx, systems, rates, probes, answers, memory)


def _report(ctx: Context, systems, rates, probes, answers, memory) -> None:
    for server in systems:
        ctx.record("saturated output tokens/s (burst probe)", server.impl, [probes[server.impl][1]], unit="tok/s",
                   what=server.what, params={"requests": ctx.settings["probe"]["requests"]})  # fmt: skip
    by_impl = {s.impl: s for s in systems}
    ctx.table("Per system and arrival rate", ["system", "rate (req/s)", "requests", "completed", "errors", "cancelled",
              "output tok/s", "TTFT p50 (ms)", "TTFT p99 (ms)", "ITL p50 (ms)", "ITL p99 (ms)", "latency p99 (ms)"],
              [[s.impl, rate, m.requests, m.completed, m.errors, m.cancelled, m.output_tokens_per_s, m.ttft_p50_ms,
                m.ttft_p99_ms, m.itl_p50_ms, m.itl_p99_ms, m.latency_p99_ms]
               for rate in rates for s in systems for m in [s.summaries[rate]]],
              note="TTFT counts a request cancelled before its first token (drain time over) as the time it waited.")  # fmt: skip
    ratios = []
    for rate in rates:
        ours = by_impl[OURS].summaries[rate]
        for impl in (NF4, LLAMA):
            theirs = by_impl[impl].summaries[rate]
            ratios.append([impl, rate, _ratio(theirs.output_tokens_per_s, ours.output_tokens_per_s),
                           _ratio(theirs.ttft_p50_ms, ours.ttft_p50_ms), _ratio(theirs.itl_p50_ms, ours.itl_p50_ms)])  # fmt: skip
    ratios += [[impl, "burst", _ratio(probes[impl][1], probes[OURS][1]), None, None] for impl in (NF4, LLAMA)]
    ctx.table("Against adapterhub float32 (x)", ["system", "rate (req/s)", "output tok/s", "TTFT p50", "ITL p50"], ratios,
              note="Above 1 is more tokens/s, or a longer latency, than adapterhub's float32 server.")  # fmt: skip
    agree = {impl: sum(a == b for a, b in zip(answers[impl], answers[OURS])) for impl in (NF4, LLAMA)}
    ctx.settings["greedy_answers"] = answers
    ctx.note(f"16 greedy tokens per adapter on one prompt (settings.greedy_answers): llama.cpp's equal adapterhub "
             f"float32's for {agree[LLAMA]} of {len(answers[LLAMA])} adapters, nf4's for {agree[NF4]}. The float32 weights "
             "are the Q4_1 GGUF dequantized, the same numbers; llama.cpp rounds activations to 8 bits for its Q4_1 "
             "products. That llama.cpp applies each converted LoRA as peft does is checked by "
             "tests/test_llama_cpp_baseline.py (log-probability shifts of a LoRA against peft's).")  # fmt: skip
    ctx.note("Rates are the serving suite's fractions and multiples of adapterhub float32's probed capacity "
             f"(settings.rates_req_per_s), its seeded draws, shorter runs (settings.durations_s, drain "
             f"{ctx.settings['drain_s']:.0f} s). The burst row is each server's own probe: output tokens/s of 8 "
             "requests sent at once, from the first token on, cut off after settings.probe.cut_off_s.")  # fmt: skip
    ctx.note(f"llama.cpp: {ctx.settings['llama_cpp']}, {THREADS} thread, {ROWS} slots of {ROW_TOKENS} "
             "tokens; requests with different LoRAs are not batched together by llama-server. The three servers and "
             "the client share the machine. Server RSS after the runs (MB): "
             + ", ".join(f"{impl} {mb:,.0f}" for impl, mb in memory.items() if mb is not None) + ".")  # fmt: skip
    ctx.plot = serving._plot


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator
