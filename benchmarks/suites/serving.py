"""Serving under Poisson load over 8 adapters: adapterhub serve (continuous batching; its static batcher) vs transformers + peft.

Three servers run as subprocesses on loopback, all three alive for the whole run, on the same base and the same 8
rank-16 LoRAs (random non-zero weights, pushed to a scratch registry): `adapterhub serve --batching continuous`,
`adapterhub serve --batching static` (requests collected for --max-wait-ms, run as one `model.generate`, answered
whole), and `benchmarks/serving_baseline.py`, what a user writes without adapterhub (one PeftModel holding every
adapter, `set_adapter` per request, one request at a time, `TextIteratorStreamer`). One client
(`benchmarks/loadgen.py`) sends them the same seeded requests: Poisson arrivals, prompts of 16-128 tokens, 8-128
output tokens (`ignore_eos`), each streamed. A first burst against the continuous server estimates its capacity;
the arrival rates are fractions and multiples of it, the same for every system, and at each rate the systems take
turns. Recorded per system and rate: output tokens/s, TTFT and inter-token latency p50/p99, and the TTFT p99 of
short requests (≤ 16 tokens) sent while a long one (≥ 96) ran; plus the continuous server at the highest rate with
every request on one adapter, for the 8-vs-1 adapter comparison, and with the eighth adapter replaced by a
prompt-tuning one (the slots cannot hold it: 1 in 8 requests are prefilled through peft), for what that costs.
The roofline rows (benchmarks/roofline.py): this machine's read bandwidth and matmul rate, measured first, and
each streaming system's ITL p50 as a multiple of the floor of its decode step.
Where llama.cpp is found (`LLAMA_CPP_DIR`, docs/benchmarks.md) and the base is a GGUF, llama.cpp's `llama-server`
runs beside them as a fourth system, the same LoRAs converted by its own converter (suite `serving_llamacpp` has
it beside our nf4 path too); otherwise the report says why it is left out.
The prefix-reuse case (every request after its adapter's 256-token system prompt, with and without reuse) is the
suite `serving_prefix`, which runs alone in minutes.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import loadgen, models, roofline
from benchmarks.harness import BASELINE, OURS, Context
from benchmarks.suites import BenchmarkError, SuiteUnavailable
from benchmarks.suites.runtime import LORA, _make_adapters

REQUIRES = {"httpx": "httpx", "fastapi": "fastapi", "uvicorn": "uvicorn"}
DEVICES = ("cpu",)  # the baseline loads its model on the CPU; a GPU run would need both sides placed alike
REPO_ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = 8
PROMPT_TUNED = "pt0"  # a prompt-tuning adapter: not slottable, prefilled through peft by the continuous engine
PROMPT_TUNING = {"num_virtual_tokens": 20}
STATIC = "adapterhub static"
METRICS = (  # (case, LoadSummary field, unit)
    ("output tokens/s", "output_tokens_per_s", "tok/s"), ("TTFT p50", "ttft_p50_ms", "ms"), ("TTFT p99", "ttft_p99_ms", "ms"),
    ("ITL p50", "itl_p50_ms", "ms"), ("ITL p99", "itl_p99_ms", "ms"), ("latency p99", "latency_p99_ms", "ms"),
    ("short-while-long TTFT p99", "short_while_long_ttft_p99_ms", "ms"),
)  # fmt: skip


@dataclass(frozen=True)
class Size:
    """How long a run is: seconds of arrivals per rate (longer at a low rate, so that it still sends
    `min_requests`, up to `max_duration_s`), the drain allowed after them, and the capacity probe."""

    duration_s: float
    min_requests: int
    max_duration_s: float
    drain_s: float
    probe_requests: int
    probe_s: float  # the probe's burst is cut off after this; tokens streamed until then count
    rate_factors: tuple[float, ...]  # of the probed capacity (requests/s); the last one saturates every system
    startup_s: float = 600.0

    def duration(self, rate: float) -> float:
        return min(self.max_duration_s, max(self.duration_s, self.min_requests / rate))

    def rates(self, capacity: float) -> list[float]:
        """The arrival rates for a probed capacity (requests/s); none so low that a run sends fewer than
        `min_requests` (a slow server would otherwise get no request at all in a short run)."""
        floor = self.min_requests / self.max_duration_s
        return sorted({round(max(floor, factor * capacity), 3) for factor in self.rate_factors})


FULL = Size(
    duration_s=75.0,
    min_requests=12,
    max_duration_s=120.0,
    drain_s=45.0,
    probe_requests=8,
    probe_s=40.0,
    rate_factors=(0.5, 1.0, 2.0),
)
QUICK = Size(duration_s=5.0, min_requests=5, max_duration_s=8.0, drain_s=3.0, probe_requests=8, probe_s=6.0, rate_factors=(0.5, 1.5),
             startup_s=180.0)  # fmt: skip


@dataclass
class Server:
    """One system under test, running as its own process group, its output in `log`."""

    impl: str
    what: str
    command: list[str]
    port: int
    log: Path
    process: subprocess.Popen | None = None
    summaries: dict[float, loadgen.LoadSummary] = field(default_factory=dict)
    short_ttft_s: list[float] = field(default_factory=list)  # short-while-long TTFTs over every rate

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, env: dict[str, str]) -> None:
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env, start_new_session=True
            )

    def wait_healthy(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchmarkError(f"{self.impl} server exited with status {self.process.returncode} before answering /health; "
                                     f"end of its log ({self.log}):\n{self.log.read_text(errors='replace')[-2000:]}")  # fmt: skip
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise BenchmarkError(f"{self.impl} server did not answer /health within {timeout_s:.0f} s; see {self.log}")

    def rss_mb(self) -> float | None:
        import psutil

        try:
            return psutil.Process(self.process.pid).memory_info().rss / 2**20
        except psutil.Error:
            return None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _require_batching_option() -> None:
    from adapterhub.cli.serve import serve_command

    if not any(param.name == "batching" for param in serve_command.params):
        raise BenchmarkError("this suite compares `adapterhub serve --batching continuous` with `--batching static`, and this "
                             "adapterhub's serve has no --batching option yet (issue 14); update adapterhub")  # fmt: skip


def push_adapters(path: str, root: Path, registry) -> list[str]:
    """Push the runtime suite's rank-16 all-linear LoRAs (random non-zero B) and a prompt-tuning adapter
    (`PROMPT_TUNED`) for the base at `path`; return the first `ADAPTERS` LoRA refs. Loading the base also writes the
    dequantized copy of a GGUF the baseline reads."""
    import torch

    from adapterhub import adapters
    from adapterhub.base import load_base

    base = load_base(path, model_task="causal-lm")
    _make_adapters(base, root, registry)
    torch.manual_seed(ADAPTERS)
    options = adapters.make_options("prompt_tuning", PROMPT_TUNING)
    model = adapters.attach(base, "prompt_tuning", options)  # random virtual tokens, as after training
    directory = adapters.save_adapter(
        model, root / PROMPT_TUNED, adapters.build_manifest(base, "prompt_tuning", options)
    )
    registry.push(PROMPT_TUNED, directory, method="prompt_tuning", base_fingerprint=base.fingerprint_id)
    del base, model
    gc.collect()
    return [f"a{i}" for i in range(ADAPTERS)]


def servers(path: str, registry_root: Path, refs: list[str], logs: Path) -> list[Server]:
    def ours(batching: str) -> list[str]:
        return [sys.executable, "-m", "adapterhub.cli", "serve", "--base", path, "--registry", str(registry_root),
                "--host", "127.0.0.1", "--port", "{port}", "--slots", "8", "--max-rank", "16", "--max-new-tokens", "256",
                "--max-input-tokens", "512", "--batching", batching]  # fmt: skip

    baseline = [sys.executable, "-m", "benchmarks.serving_baseline", "--base", path, "--registry", str(registry_root),
                "--adapters", ",".join(refs), "--port", "{port}"]  # fmt: skip
    systems = [(OURS, "adapterhub serve --batching continuous", ours("continuous")),
               (STATIC, "adapterhub serve --batching static", ours("static")),
               (BASELINE, "transformers + peft, set_adapter, one request at a time (benchmarks/serving_baseline.py)", baseline)]  # fmt: skip
    result = []
    for impl, what, command in systems:
        port = _free_port()
        result.append(
            Server(
                impl,
                what,
                [a.replace("{port}", str(port)) for a in command],
                port,
                logs / f"{impl.replace(' ', '-')}.log",
            )
        )
    return result


def _environment() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip


def _settle(server: Server, ref: str) -> None:
    """Wait until the server has worked off what a run left (cancelled requests a batch still holds)."""
    loadgen.complete(server.url, ref, " hello", 1)


def probe_capacity(server: Server, shape: loadgen.LoadShape, size: Size, words, count_tokens,
                   body=loadgen.request_body) -> tuple[float, float]:  # fmt: skip
    """Requests/s the server sustains, and its output tokens/s: tokens streamed during a burst of requests (cut
    off after `size.probe_s`) from its first token on (the prefill of the whole burst before it is no steady
    state), divided by the mean output length the runs' requests ask for. ``body`` builds each request's body
    (llama.cpp's server selects its adapter another way: serving_llamacpp)."""
    planned = loadgen.burst(size.probe_requests, shape, words)
    results = loadgen.run_load(server.url, planned, drain_s=size.probe_s, seed=shape.seed, body=body)
    _settle(server, shape.adapters[0])
    summary = loadgen.summarize(results, count_tokens)
    first = min((r.chunk_s[0] for r in results if r.chunk_s), default=None)
    if summary.errors or first is None or summary.wall_s <= first:
        errors = "; ".join(r.error for r in results if r.error)[:600]
        raise BenchmarkError(f"the capacity probe against {server.impl} failed ({summary.errors} of {len(planned)} requests "
                             f"errored: {errors}; {summary.output_tokens} tokens streamed in {size.probe_s:.0f} s); "
                             f"see {server.log}")  # fmt: skip
    tokens_per_s = summary.output_tokens / (summary.wall_s - first)
    return tokens_per_s / (sum(shape.output_tokens) / 2), tokens_per_s


def start(systems: list[Server], refs: list[str], timeout_s: float) -> None:
    """Start each server, wait for its /health, and send each adapter once (it loads into a slot), untimed.
    One at a time: started together, they would slow each other's loading past the timeout."""
    for server in systems:
        server.start(_environment())
        server.wait_healthy(timeout_s)
        for ref in refs:
            loadgen.complete(server.url, ref, " hello world", 2)


def run(ctx: Context) -> None:
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from adapterhub_registry import Registry
    from benchmarks.suites import serving_llamacpp

    _require_batching_option()
    size = QUICK if ctx.quick else FULL
    path, label = models.model_for(ctx)
    measured = roofline.measure(repeats=3 if ctx.quick else 5)  # before any server starts: the machine as found
    with ctx.scratch("serving") as root:
        registry = Registry(root / "registry")
        refs = push_adapters(path, root, registry)
        peer = _llama_cpp(ctx, path, registry, refs, root)
        registry.close()
        tokenizer = AutoTokenizer.from_pretrained(models.transformers_dir(path))
        words = loadgen.PromptWords(tokenizer)
        count_tokens = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
        systems = servers(path, root / "registry", refs, root) + peer
        try:
            start(systems, refs, size.startup_s)
            loadgen.complete(
                systems[0].url, PROMPT_TUNED, " hello world", 2
            )  # the prompt-tuning adapter into host memory
            shape = loadgen.LoadShape(
                rate=1.0, duration_s=size.duration_s, adapters=tuple(refs), seed=ctx.seed
            )  # the probe's draws
            capacity, probe_tokens_per_s = probe_capacity(systems[0], shape, size, words, count_tokens)
            rates = size.rates(capacity)
            durations = [size.duration(rate) for rate in rates]
            ctx.settings.update(model=label, adapters=ADAPTERS, lora=LORA, rates_req_per_s=rates, durations_s=durations,
                                drain_s=size.drain_s, prompt_tokens=shape.prompt_tokens, output_tokens=shape.output_tokens,
                                probe={"requests": size.probe_requests, "cut_off_s": size.probe_s,
                                       "output_tokens_per_s": round(probe_tokens_per_s, 2), "capacity_req_per_s": round(capacity, 4)},
                                commands={s.impl: " ".join(s.command) for s in systems})  # fmt: skip
            with tqdm(
                total=len(rates) * len(systems) + 2,
                desc="serving: load runs",
                unit="run",
                disable=not ctx.progress,
                leave=False,
            ) as bar:
                for i, (rate, duration) in enumerate(zip(rates, durations)):
                    planned = loadgen.schedule(loadgen.LoadShape(rate, duration, tuple(refs), seed=ctx.seed), words)
                    for server in systems if i % 2 == 0 else systems[::-1]:  # take turns, so load drift hits all alike
                        results = loadgen.run_load(server.url, planned, drain_s=size.drain_s, seed=ctx.seed,
                                                   body=serving_llamacpp.body_for(server, refs))  # fmt: skip
                        _settle(server, refs[0])
                        _record(ctx, server, rate, results, count_tokens)
                        bar.update(1)
                one = loadgen.schedule(loadgen.LoadShape(rates[-1], durations[-1], (refs[0],), seed=ctx.seed), words)
                single = loadgen.summarize(
                    loadgen.run_load(systems[0].url, one, drain_s=size.drain_s, seed=ctx.seed), count_tokens
                )
                _settle(systems[0], refs[0])
                bar.update(1)
                mixed = (*refs[:-1], PROMPT_TUNED)  # the same draws as the 8-adapter run, a7's requests on pt0
                laned = loadgen.schedule(loadgen.LoadShape(rates[-1], durations[-1], mixed, seed=ctx.seed), words)
                lane = loadgen.summarize(
                    loadgen.run_load(systems[0].url, laned, drain_s=size.drain_s, seed=ctx.seed), count_tokens
                )
                _settle(systems[0], refs[0])
                bar.update(1)
            memory = {s.impl: s.rss_mb() for s in systems}
        finally:
            for server in systems:
                server.stop()
    _report(ctx, systems, rates, single, lane, memory)
    _roofline(ctx, measured, path, systems, rates)


def _llama_cpp(ctx: Context, path: str, registry, refs: list[str], root: Path) -> list[Server]:
    """llama.cpp's server as a fourth system, where llama.cpp is found and the base is a GGUF; else a note why not."""
    from benchmarks import llama_cpp_baseline
    from benchmarks.suites import serving_llamacpp

    try:
        llama = llama_cpp_baseline.locate()
    except SuiteUnavailable as exc:
        ctx.note(f"llama.cpp left out: {exc.message}")
        return []
    if not path.endswith(".gguf"):
        ctx.note("llama.cpp left out: the base is no GGUF file, the only format llama-server runs")
        return []
    return [serving_llamacpp.llama_system(llama, Path(path), registry, refs, root / "llama.cpp", ctx.progress)]


def _record(ctx: Context, server: Server, rate: float, results: list[loadgen.RequestResult], count_tokens) -> None:
    summary = loadgen.summarize(results, count_tokens)
    server.summaries[rate] = summary
    server.short_ttft_s += [
        r.ttft_s for r in loadgen.short_while_long(results) if r.error is None and r.ttft_s is not None
    ]
    for case, attribute, unit in METRICS:
        value = getattr(summary, attribute)
        if value is None or not summary.output_tokens:  # nothing came back: the table says so, no figure to plot
            continue
        extra = (
            {"summary": summary.to_dict(), "requests": [r.to_dict() for r in results]}
            if attribute == "output_tokens_per_s"
            else None
        )
        ctx.record(case, server.impl, [value], what=server.what, params={"rate": rate}, unit=unit, extra=extra)


def _ratio_check(ctx: Context, what: str, numerator: float | None, denominator: float | None, limit: float) -> None:
    if numerator is None or not denominator:
        ctx.note(f"Target not evaluated, no figure to compare: {what}.")
        return
    ctx.check(what, numerator / denominator, limit, unit="x")


def _report(ctx: Context, systems: list[Server], rates: list[float], single: loadgen.LoadSummary, lane: loadgen.LoadSummary,
            memory: dict) -> None:  # fmt: skip
    import numpy

    ours, static, baseline = systems[:3]
    top = rates[-1]
    _ratio_check(ctx, f"static / continuous output tokens/s at {top} req/s, saturated (≤ 0.50 is continuous ≥ 2× static)",
                 static.summaries[top].output_tokens_per_s, ours.summaries[top].output_tokens_per_s, 0.5)  # fmt: skip
    p99 = {s.impl: (float(numpy.percentile(s.short_ttft_s, 99)) if s.short_ttft_s else None) for s in systems}
    _ratio_check(ctx, f"continuous / static p99 TTFT of short requests (≤ {loadgen.SHORT_MAX_TOKENS} tokens) sent while a long one "
                      f"(≥ {loadgen.LONG_MIN_TOKENS}) ran, all rates pooled (n = {len(ours.short_ttft_s)} / {len(static.short_ttft_s)})",
                 p99[OURS], p99[STATIC], 0.25)  # fmt: skip
    eight = ours.summaries[top].output_tokens_per_s
    ctx.record("output tokens/s, 1 adapter", OURS, [single.output_tokens_per_s], what="the same schedule with every request on a0",
               params={"rate": top}, unit="tok/s", extra={"summary": single.to_dict()})  # fmt: skip
    _ratio_check(ctx, "continuous: 1-adapter / 8-adapter output tokens/s at the highest rate (≤ 1.11 is 8 adapters ≥ 0.90×)",
                 single.output_tokens_per_s, eight, 1 / 0.9)  # fmt: skip
    ctx.record("output tokens/s, 1 in 8 prompt tuning", OURS, [lane.output_tokens_per_s], unit="tok/s",
               what=f"the 8-adapter schedule with a7's requests on {PROMPT_TUNED} (prompt tuning, {PROMPT_TUNING['num_virtual_tokens']} "
                    "virtual tokens: prefilled through peft, then decoded in the slotted batch)", params={"rate": top}, extra={"summary": lane.to_dict()})  # fmt: skip
    _ratio_check(ctx, "continuous: all-slotted / 1-in-8-prompt-tuning output tokens/s at the highest rate (≤ 1.25 is the "
                      "prompt-tuning workload ≥ 0.80×)", eight, lane.output_tokens_per_s, 1 / 0.8)  # fmt: skip
    columns = ["system", "rate (req/s)", "requests", "completed", "errors", "cancelled", "output tok/s", "TTFT p50 (ms)", "TTFT p99 (ms)",
               "ITL p50 (ms)", "ITL p99 (ms)", "latency p99 (ms)", "short-while-long TTFT p99 (ms)", "short-while-long n"]  # fmt: skip
    rows = [[s.impl, rate, m.requests, m.completed, m.errors, m.cancelled, m.output_tokens_per_s, m.ttft_p50_ms, m.ttft_p99_ms,
             m.itl_p50_ms, m.itl_p99_ms, m.latency_p99_ms, m.short_while_long_ttft_p99_ms, m.short_while_long]
            for rate in rates for s in systems for m in [s.summaries[rate]]]  # fmt: skip
    ctx.table("Per system and arrival rate", columns, rows,
              note="TTFT counts a request cancelled before its first token (drain time over) as the time it waited: a lower "
                   "bound. ITL is empty for the static batcher: its answer arrives as one chunk, so TTFT is the whole latency.")  # fmt: skip
    ctx.table("Short requests sent while a long one ran, all rates pooled", ["system", "n", "TTFT p99 (ms)"],
              [[s.impl, len(s.short_ttft_s), None if p99[s.impl] is None else p99[s.impl] * 1000] for s in systems])  # fmt: skip
    ctx.note(
        "Rates are fractions and multiples of the continuous server's capacity, probed by a burst at the start "
        "(settings.probe); the highest saturates every system, so its tokens/s is the saturated throughput."
    )
    ctx.note(f"Each rate sends Poisson arrivals for its duration (settings.durations_s); requests still running "
             f"{ctx.settings['drain_s']:.0f} s after the last arrival are cancelled (an overloaded server never drains); their "
             "tokens received so far count in tokens/s, which is output tokens over the run's wall time. In the "
             "table's last column an adapterhub / peft ratio above 1 is adapterhub ahead for tok/s rows, below 1 for ms rows.")  # fmt: skip
    ctx.note("The three servers and the load generator share the machine: the client's own CPU time is taken from the "
             "server under test, alike for all three. Servers process RSS after the runs (MB): "
             + ", ".join(f"{impl} {mb:,.0f}" for impl, mb in memory.items() if mb is not None) + ".")  # fmt: skip
    ctx.plot = _plot


def _roofline(ctx: Context, measured: roofline.Roofline, path: str, systems: list[Server], rates: list[float]) -> None:
    """The roofline rows (issue 28): each system's ITL p50 against the floor of a decode step of as many rows as it
    decodes at once (the continuous engine's --max-running, one for the baseline; the static batcher streams none)."""
    from adapterhub.server.settings import ServerSettings

    params, weight_bytes = roofline.model_size(models.transformers_dir(path))
    rows = {OURS: ServerSettings().max_running, BASELINE: 1}
    roofline.record(ctx, measured, params, weight_bytes,
                    {s.impl: (rows[s.impl], {rate: s.summaries[rate].itl_p50_ms for rate in rates}) for s in systems if s.impl in rows})  # fmt: skip
    ctx.note(f"Roofline: read bandwidth and matmul rate measured by the suite before the servers started, with torch's "
             f"{measured.threads} threads (benchmarks/roofline.py); a decode step's floor is max(weight bytes / bandwidth, "
             f"2 x params x rows / matmul rate) for {params / 1e6:.4g} M parameters in {weight_bytes / 1e6:.4g} MB. At rates "
             "below saturation a system decodes fewer rows than its floor assumes, so its multiple there is a lower bound.")  # fmt: skip


def _plot(document: dict, path: Path) -> None:
    """Output tokens/s against p99 TTFT and against p99 end-to-end latency, one line per system, a point per rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    points: dict[str, dict[float, dict[str, float]]] = {}
    for m in document["measurements"]:
        if "rate" in m["params"] and m["case"] in ("output tokens/s", "TTFT p99", "latency p99"):
            points.setdefault(m["impl"], {}).setdefault(m["params"]["rate"], {})[m["case"]] = m["stats"]["median"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, latency in zip(axes, ("TTFT p99", "latency p99")):
        for impl, by_rate in points.items():
            rates = sorted(r for r, v in by_rate.items() if latency in v and "output tokens/s" in v)
            xs = [by_rate[r][latency] / 1000 for r in rates]
            ys = [by_rate[r]["output tokens/s"] for r in rates]
            axis.plot(xs, ys, marker="o", label=impl)
            for x, y, rate in zip(xs, ys, rates):
                axis.annotate(f"{rate:g}/s", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        axis.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        axis.tick_params(axis="x", which="minor", labelsize=7)
        axis.set_xlabel(f"{latency} (s, log)")
        axis.set_ylabel("output tokens/s")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    quick = ", quick" if document["quick"] else ""
    figure.suptitle(
        f"serving — {document['device']}{quick}: throughput against p99 latency (points: arrival rates)", fontsize=11
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
