"""An open-loop load generator for OpenAI-compatible `/v1/completions` servers (the `serving` suite's client).

Requests arrive as a Poisson process at a given rate, whatever the server's speed (an open loop: a slow server
builds a queue, as it would in front of real users). Each one names one of K adapters as its `model`, carries a
prompt of a drawn number of tokens and asks for a drawn number of output tokens (`ignore_eos` + `min_tokens`, so
the server makes exactly that many). Everything is drawn from one seeded generator: two systems given the same
seed get the same requests at the same offsets. Every request is streamed, and the arrival time of every chunk
is kept, so time to first token and inter-token latency come from what a client actually saw.

Written with httpx + asyncio rather than locust: one process, no web UI, and per-chunk timestamps of a streamed
answer (locust times whole requests).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpx

SHORT_MAX_TOKENS = 16  # a "short" request asks for at most this many output tokens
LONG_MIN_TOKENS = 96  # a "long" one for at least this many
COMPLETIONS = "/v1/completions"


@dataclass(frozen=True)
class LoadShape:
    """What to send: `rate` requests/s (Poisson) for `duration_s`, over `adapters`, lengths drawn uniformly."""

    rate: float
    duration_s: float
    adapters: tuple[str, ...]
    prompt_tokens: tuple[int, int] = (16, 128)
    output_tokens: tuple[int, int] = (8, 128)
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number of requests per second, not {self.rate!r}")
        if not self.adapters:
            raise ValueError("name at least one adapter (a registry ref) for the requests' model")
        for label, (low, high) in (("prompt_tokens", self.prompt_tokens), ("output_tokens", self.output_tokens)):
            if not 1 <= low <= high:
                raise ValueError(f"{label} must be a range (low, high) with 1 <= low <= high, not {(low, high)!r}")


@dataclass(frozen=True)
class PlannedRequest:
    """One request of a schedule: sent `at_s` after the run starts."""

    index: int
    at_s: float
    model: str
    prompt: str
    prompt_tokens: int
    max_tokens: int


class PromptWords:
    """Words that are one token each for a tokenizer (with a leading space), so a prompt of n of them is n tokens.

    Taken from the tokenizer's own vocabulary in id order, so the same tokenizer always gives the same words."""

    def __init__(self, tokenizer, limit: int = 512) -> None:
        words: dict[str, None] = {}
        for token_id in range(len(tokenizer)):
            word = tokenizer.decode([token_id]).strip()
            if (
                len(word) >= 2
                and word.isalnum()
                and word.isascii()
                and len(tokenizer.encode(" " + word, add_special_tokens=False)) == 1
            ):
                words[word] = None
                if len(words) == limit:
                    break
        if len(words) < 8:
            raise ValueError(f"the tokenizer has only {len(words)} whole-word tokens; prompts need at least 8")
        self.words = list(words)

    def prompt(self, rng: random.Random, n_tokens: int) -> str:
        return "".join(" " + self.words[int(rng.random() * len(self.words))] for _ in range(n_tokens))


def _draw(rng: random.Random, index: int, at_s: float, shape: LoadShape, words: PromptWords) -> PlannedRequest:
    # Every field is drawn with rng.random() (exactly one draw each), so the number of adapters never shifts the
    # later draws: 1 adapter and 8 adapters get the same arrivals, prompts and lengths.
    adapter = shape.adapters[int(rng.random() * len(shape.adapters))]
    n_prompt = shape.prompt_tokens[0] + int(rng.random() * (shape.prompt_tokens[1] - shape.prompt_tokens[0] + 1))
    n_output = shape.output_tokens[0] + int(rng.random() * (shape.output_tokens[1] - shape.output_tokens[0] + 1))
    return PlannedRequest(index, at_s, adapter, words.prompt(rng, n_prompt), n_prompt, n_output)


def schedule(shape: LoadShape, words: PromptWords) -> list[PlannedRequest]:
    """Poisson arrivals at `shape.rate` over `shape.duration_s`: exponential gaps, all from one seeded generator."""
    rng = random.Random(shape.seed)
    planned: list[PlannedRequest] = []
    at = rng.expovariate(shape.rate)
    while at < shape.duration_s:
        planned.append(_draw(rng, len(planned), at, shape, words))
        at += rng.expovariate(shape.rate)
    return planned


def burst(n: int, shape: LoadShape, words: PromptWords) -> list[PlannedRequest]:
    """`n` requests all sent at once (a capacity probe), drawn like those of `schedule`."""
    rng = random.Random(shape.seed)
    return [_draw(rng, i, 0.0, shape, words) for i in range(n)]


@dataclass
class RequestResult:
    """What the client saw of one request; times are seconds since the run started."""

    planned: PlannedRequest
    sent_s: float | None = None
    chunk_s: list[float] = field(default_factory=list)  # arrival of every chunk with new text
    chunk_text: list[str] = field(default_factory=list)
    end_s: float | None = None
    prompt_tokens: int | None = None  # from the answer's usage
    completion_tokens: int | None = None
    error: str | None = None
    cancelled: bool = False  # still running when the run's drain time was over

    @property
    def ttft_s(self) -> float | None:
        """Time to the first chunk with text; for a request cancelled before one, the time it waited (a lower bound)."""
        if self.sent_s is None:
            return None
        if self.chunk_s:
            return self.chunk_s[0] - self.sent_s
        return self.end_s - self.sent_s if self.cancelled and self.end_s is not None else None

    def chunk_tokens(self, count_tokens: Callable[[str], int]) -> list[int]:
        """Tokens each chunk carried: one each when the chunks match the usage count (a token per chunk), else
        the tokenizer's count of each chunk's text (a chunk of whole words, or a whole answer at once)."""
        if self.completion_tokens is not None and len(self.chunk_text) == self.completion_tokens:
            return [1] * len(self.chunk_text)
        return [max(1, count_tokens(text)) for text in self.chunk_text]

    def itl_s(self, count_tokens: Callable[[str], int]) -> list[float]:
        """Inter-token latencies: each gap between chunks spread evenly over the tokens of the later chunk."""
        tokens = self.chunk_tokens(count_tokens)
        gaps: list[float] = []
        for k in range(1, len(self.chunk_s)):
            gaps += [(self.chunk_s[k] - self.chunk_s[k - 1]) / tokens[k]] * tokens[k]
        return gaps

    def to_dict(self) -> dict:
        """The per-request record kept in a result file (chunk texts left out)."""
        return {"index": self.planned.index, "model": self.planned.model, "at_s": round(self.planned.at_s, 4),
                "prompt_tokens_asked": self.planned.prompt_tokens, "max_tokens": self.planned.max_tokens,
                "sent_s": _rounded(self.sent_s), "ttft_s": _rounded(self.ttft_s), "end_s": _rounded(self.end_s),
                "chunks": len(self.chunk_s), "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "error": self.error, "cancelled": self.cancelled}  # fmt: skip


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def request_body(planned: PlannedRequest, seed: int) -> dict:
    """The OpenAI completions body: greedy, exactly `max_tokens` new tokens (vLLM's extras), streamed with usage."""
    return {"model": planned.model, "prompt": planned.prompt, "max_tokens": planned.max_tokens, "temperature": 0.0,
            "seed": seed + planned.index, "stream": True, "stream_options": {"include_usage": True},
            "ignore_eos": True, "min_tokens": planned.max_tokens}  # fmt: skip


Body = Callable[[PlannedRequest, int], dict]  # (request, seed) -> the JSON body a server is sent


async def _stream(client: httpx.AsyncClient, result: RequestResult, started: float, seed: int, body: Body) -> None:
    planned = result.planned
    await asyncio.sleep(max(0.0, started + planned.at_s - time.perf_counter()))
    result.sent_s = time.perf_counter() - started
    done = False
    try:
        async with client.stream("POST", COMPLETIONS, json=body(planned, seed)) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                result.error = f"HTTP {response.status_code}: {text[:300]}"
                return
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = f"error event: {json.dumps(chunk['error'])[:300]}"
                    return
                text = (chunk.get("choices") or [{}])[0].get("text") or ""
                if text:
                    result.chunk_s.append(time.perf_counter() - started)
                    result.chunk_text.append(text)
                if chunk.get("usage"):
                    result.prompt_tokens = chunk["usage"].get("prompt_tokens")
                    result.completion_tokens = chunk["usage"].get("completion_tokens")
        if not done:
            result.error = "the stream ended without data: [DONE]"
        elif result.completion_tokens is None:
            result.error = "no usage chunk in the stream (stream_options.include_usage was asked for)"
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        result.end_s = time.perf_counter() - started


async def _run(url: str, planned: list[PlannedRequest], drain_s: float, seed: int, body: Body) -> list[RequestResult]:
    results = [RequestResult(p) for p in planned]
    if not results:
        return results
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)  # open loop: never queue in the client
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(None, connect=30.0), limits=limits) as client:
        started = time.perf_counter()
        tasks = [asyncio.create_task(_stream(client, r, started, seed, body)) for r in results]
        last = max((p.at_s for p in planned), default=0.0)
        _, pending = await asyncio.wait(tasks, timeout=last + drain_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for result, task in zip(results, tasks):
        if task in pending:
            result.cancelled = True
            result.end_s = time.perf_counter() - started
    return results


def run_load(
    url: str, planned: list[PlannedRequest], *, drain_s: float, seed: int = 0, body: Body = request_body
) -> list[RequestResult]:
    """Send `planned` to the server at `url` on schedule and stream every answer; requests still running
    `drain_s` after the last was sent are cancelled (kept, marked `cancelled`: an overloaded server never drains).
    `body` builds each request's JSON: a server that picks adapters its own way (llama.cpp's per-request `lora`
    list) gets `request_body` plus its fields."""
    return asyncio.run(_run(url.rstrip("/"), planned, drain_s, seed, body))


def complete(url: str, model: str, prompt: str, max_tokens: int, timeout_s: float = 600.0) -> dict:
    """One non-streamed completion, waited for: warms an adapter up, or waits until a server has worked off its
    queue (a request behind the queue finishes after it)."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "min_tokens": max_tokens,
    }
    response = httpx.post(url.rstrip("/") + COMPLETIONS, json=body, timeout=timeout_s)
    if response.status_code != 200:
        raise RuntimeError(f"{url}{COMPLETIONS} answered {response.status_code}: {response.text[:300]}")
    return response.json()


@dataclass
class LoadSummary:
    """One run's figures. Latencies in milliseconds; None where a run had no sample for them."""

    requests: int
    completed: int
    errors: int
    cancelled: int
    wall_s: float
    output_tokens: int
    output_tokens_per_s: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    itl_p50_ms: float | None
    itl_p99_ms: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    short_while_long_ttft_p99_ms: float | None
    short_while_long: int  # how many short requests were sent while a long one ran
    ttft_lower_bounds: int  # requests cancelled before their first token: their TTFT counts as the time waited

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def percentile(values: Iterable[float], q: float) -> float | None:
    import numpy

    values = list(values)
    return float(numpy.percentile(values, q)) if values else None


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000.0


def short_while_long(results: list[RequestResult]) -> list[RequestResult]:
    """Short requests (≤ SHORT_MAX_TOKENS) sent while a long one (≥ LONG_MIN_TOKENS) was running."""
    running = [
        (r.sent_s, r.end_s)
        for r in results
        if r.planned.max_tokens >= LONG_MIN_TOKENS and r.sent_s is not None and r.end_s is not None
    ]
    return [r for r in results if r.planned.max_tokens <= SHORT_MAX_TOKENS and r.sent_s is not None
            and any(start <= r.sent_s < end for start, end in running)]  # fmt: skip


def summarize(results: list[RequestResult], count_tokens: Callable[[str], int]) -> LoadSummary:
    """Throughput = output tokens delivered (a completed request's usage count; a cancelled one's chunks so far)
    over the run's wall time; TTFT and latency percentiles over every request that got an answer or was
    cancelled; ITL over every gap between chunks. Failed requests count only as errors."""
    ok = [r for r in results if r.error is None and r.sent_s is not None]
    completed = [r for r in ok if not r.cancelled]
    tokens = sum(r.completion_tokens or 0 for r in completed) + sum(
        sum(r.chunk_tokens(count_tokens)) for r in ok if r.cancelled
    )
    wall = max((r.end_s for r in results if r.end_s is not None), default=0.0)
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    itl = [gap for r in ok for gap in r.itl_s(count_tokens)]
    latency = [r.end_s - r.sent_s for r in completed]
    short = [r.ttft_s for r in short_while_long(ok) if r.ttft_s is not None]
    return LoadSummary(
        requests=len(results), completed=len(completed), errors=sum(r.error is not None for r in results),
        cancelled=sum(r.cancelled for r in results), wall_s=wall, output_tokens=tokens,
        output_tokens_per_s=tokens / wall if wall > 0 else 0.0,
        ttft_p50_ms=_ms(percentile(ttft, 50)), ttft_p99_ms=_ms(percentile(ttft, 99)),
        itl_p50_ms=_ms(percentile(itl, 50)), itl_p99_ms=_ms(percentile(itl, 99)),
        latency_p50_ms=_ms(percentile(latency, 50)), latency_p99_ms=_ms(percentile(latency, 99)),
        short_while_long_ttft_p99_ms=_ms(percentile(short, 99)), short_while_long=len(short),
        ttft_lower_bounds=sum(r.cancelled and not r.chunk_s for r in ok),
    )  # fmt: skip
