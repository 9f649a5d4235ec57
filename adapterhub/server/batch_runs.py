"""What the ``Batcher`` runs on each batch of ``/generate`` or ``/classify`` requests (and of ``/v1/`` completions
under ``--batching static``), on its worker thread.

``batch_runner(pool, router)`` composes it: the model call for the base's task (``generate`` or ``classify``
over the mixed-adapter batch; a static completion batch when the batch key is a ``StaticKey``, a classification
by prompting when it is a ``PromptKey``), wrapped so that one request's failure fails only that request, and, with a task
router, preceded by routing the batch's ``"task": "auto"`` requests in one forward of the bare base.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from adapterhub.continual.plan import AUTO
from adapterhub.continual.router import Router
from adapterhub.runtime import AdapterPool, GenerationSettings, classify, generate
from adapterhub.runtime.sampling import SamplingParams
from adapterhub.runtime.text_stream import TextStream
from adapterhub.server.batcher import RunBatch
from adapterhub.server.prompt_classify import PromptKey, run_prompt_classify
from adapterhub.server.schemas import ClassifyRequest, GenerateRequest

log = logging.getLogger("adapterhub.server")
RunModel = Callable[[AdapterPool, list, Hashable], list]
"""``run(pool, payloads, key) -> results``: one model call over the whole batch."""


def batch_runner(pool: AdapterPool, router: Router | None = None) -> RunBatch:
    """The batch function of a server of ``pool``'s base; ``router`` (bound to ``pool``) routes ``auto`` requests."""
    causal = pool.base.model_task == "causal-lm"
    run_batch = _isolating(_by_key(_run_generate) if causal else _run_classify, pool)
    if router is None:
        return run_batch
    return _routing(run_batch, router, _routed_text)


def _routed_text(payload: GenerateRequest | ClassifyRequest) -> str:
    """What the router reads: a classification's text (with a head, or by prompting), a generation's prompt."""
    return payload.text if isinstance(payload, ClassifyRequest) else payload.prompt


def _run_generate(pool: AdapterPool, payloads: list[GenerateRequest], settings: GenerationSettings) -> list[dict]:
    outputs = generate(pool, [p.prompt for p in payloads], [p.adapter for p in payloads], settings)
    return [{"text": o.text, "tokens": o.tokens, "adapter": o.adapter} for o in outputs]


@dataclass(frozen=True)
class StaticKey:
    """The static batcher's key for ``/v1/`` completions: what one ``generate`` call must share. Lengths are
    not part of it: the batch runs to its longest request and each row is cut to its own ``max_tokens``.
    ``generate`` cannot go on past an end-of-sequence token, so here ``ignore_eos`` keeps it from being picked
    (the continuous engine, like vLLM, lets it be picked and goes on)."""

    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    ignore_eos: bool

    @classmethod
    def of(cls, params: SamplingParams) -> StaticKey:
        return cls(params.temperature, params.top_p, params.top_k, params.seed, params.ignore_eos)


@dataclass
class StaticCompletion:
    prompt: list[int]
    adapter: str | None
    params: SamplingParams
    task: str | None = None  # never routed


def _by_key(run_generate: RunModel) -> RunModel:
    def run(pool: AdapterPool, payloads: list, key: Hashable) -> list:
        if isinstance(key, PromptKey):
            return run_prompt_classify(pool, payloads, key)
        return (_run_static_completions if isinstance(key, StaticKey) else run_generate)(pool, payloads, key)

    return run


def _run_static_completions(pool: AdapterPool, payloads: list[StaticCompletion], key: StaticKey) -> list[dict]:
    """One ``generate`` over the batch, as long as its longest request; each row cut to its own length and stops."""
    longest = max(p.params.max_tokens for p in payloads)
    settings = GenerationSettings(
        max_new_tokens=longest, do_sample=key.temperature > 0, temperature=key.temperature or 1.0, top_p=key.top_p,
        top_k=key.top_k, seed=key.seed, min_new_tokens=longest if key.ignore_eos else max(p.params.min_tokens for p in payloads),
    )  # fmt: skip
    outputs = generate(pool, [p.prompt for p in payloads], [p.adapter for p in payloads], settings)
    eos = pool.base.tokenizer.eos_token_id
    results = []
    for payload, output in zip(payloads, outputs):
        text, count, ended = TextStream(pool.base.tokenizer, payload.params.stop), 0, False
        for token in output.token_ids[: payload.params.max_tokens]:
            count += 1
            ended = token == eos and not key.ignore_eos
            if ended:
                break
            text.add(token)
            if text.stopped:
                break
        finish = "stop" if ended or text.stopped else "length"
        text.finish()
        results.append({"text": text.released, "tokens": count, "finish": finish})
    return results


def _run_classify(pool: AdapterPool, payloads: list[ClassifyRequest], key: Hashable) -> list[dict]:
    outputs = classify(pool, [p.text for p in payloads], [p.adapter for p in payloads])
    return [{"label": o.label, "scores": o.scores, "adapter": o.adapter} for o in outputs]


def _isolating(run: RunModel, pool: AdapterPool) -> RunBatch:
    """Run a batch so that one request's failure fails only that request: each distinct adapter is fetched on its
    own first (registry read and integrity check, base and head checks), and a batch that still fails runs
    again request by request."""

    def run_batch(key: Hashable, payloads: Sequence[Any]) -> list:
        results: list[Any] = [None] * len(payloads)
        failed: dict[str, Exception] = {}
        for adapter in {p.adapter for p in payloads if p.adapter is not None}:
            try:
                pool.fetch(adapter)  # now: registry, integrity and base fingerprint checks
            except Exception as exc:
                failed[adapter] = exc
        ok = [i for i, p in enumerate(payloads) if p.adapter not in failed]
        for i, p in enumerate(payloads):
            if p.adapter in failed:
                results[i] = failed[p.adapter]
        for i, result in zip(ok, _each_alone_if_failed(run, pool, [payloads[i] for i in ok], key)):
            results[i] = result
        return results

    return run_batch


def _each_alone_if_failed(run: RunModel, pool: AdapterPool, payloads: list, key: Hashable) -> list:
    """The batch's results; when the batch raises, each request's own result or error, from running it alone."""
    if not payloads:
        return []
    try:
        return run(pool, payloads, key)
    except Exception as exc:
        if len(payloads) == 1:
            return [exc]
        log.warning(
            "a batch of %d requests failed (%s: %s); running them one by one", len(payloads), type(exc).__name__, exc
        )
    results: list[Any] = []
    for payload in payloads:
        try:
            results += run(pool, [payload], key)
        except Exception as exc:
            results.append(exc)
    return results


def _routing(run_batch: RunBatch, router: Router, text_of: Callable[[Any], str]) -> RunBatch:
    """Route the batch's ``"task": "auto"`` requests in one forward of the bare base, then run the batch; every
    answer to a request that named a task says which task and adapter served it."""

    def run_batch_routed(key: Hashable, payloads: Sequence[Any]) -> list:
        auto = [i for i, p in enumerate(payloads) if p.task == AUTO]
        failed: Exception | None = None
        if auto:
            try:
                for i, route in zip(auto, router.routes([text_of(payloads[i]) for i in auto])):
                    payloads[i].adapter = route.task.ref
            except Exception as exc:  # routing failed: those requests get the error, the others still run
                failed = exc
        ready = [i for i, p in enumerate(payloads) if failed is None or p.task != AUTO]
        results: list[Any] = [failed] * len(payloads)
        for i, result in zip(ready, run_batch(key, [payloads[i] for i in ready]) if ready else []):
            task = payloads[i].task
            if task is not None and isinstance(result, dict):
                result = {**result, "task": router.task_of(payloads[i].adapter).name, "routed": task == AUTO}
            results[i] = result
        return results

    return run_batch_routed
