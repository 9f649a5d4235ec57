"""What the ``Batcher`` runs on each batch of ``/generate`` or ``/classify`` requests (and of ``/v1/`` completions
under ``--batching static``), on its worker thread.

``batch_runner(pool, router)`` composes it: the model call for the base's task (``generate`` over the
mixed-adapter batch when the batch key is a ``SamplingParams.batch_key``, what every row of the batch shares;
``classify``;
a classification by prompting when it is a ``PromptKey``), wrapped so that one request's failure fails only that request, and, with a task
router, preceded by routing the batch's ``"task": "auto"`` requests in one forward of the bare base.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from adapterhub.continual.plan import AUTO
from adapterhub.continual.router import Router
from adapterhub.runtime import AdapterPool, SamplingParams, classify, generate
from adapterhub.server.batcher import RunBatch
from adapterhub.server.prompt_classify import PromptKey, run_prompt_classify
from adapterhub.server.schemas import ClassifyRequest, GenerateRequest

log = logging.getLogger("adapterhub.server")
RunModel = Callable[[AdapterPool, list, Hashable], list]
"""``run(pool, payloads, key) -> results``: one model call over the whole batch."""


def batch_runner(pool: AdapterPool, router: Router | None = None) -> RunBatch:
    """The batch function of a server of ``pool``'s base; ``router`` (bound to ``pool``) routes ``auto`` requests."""
    causal = pool.base.model_task == "causal-lm"
    run_batch = _isolating(_by_key if causal else _run_classify, pool)
    if router is None:
        return run_batch
    return _routing(run_batch, router, _routed_text)


def _routed_text(payload: GenerateRequest | ClassifyRequest) -> str:
    """What the router reads: a classification's text (with a head, or by prompting), a generation's prompt."""
    return payload.text if isinstance(payload, ClassifyRequest) else payload.prompt


@dataclass
class StaticCompletion:
    """A ``/v1/`` completion under ``--batching static``: its prompt's tokens, adapter key and settings (queued under
    ``params.batch_key``)."""

    prompt: list[int]
    adapter: str | None
    params: SamplingParams
    task: str | None = None  # never routed


def _by_key(pool: AdapterPool, payloads: list, key: Hashable) -> list:
    if isinstance(key, PromptKey):
        return run_prompt_classify(pool, payloads, key)
    return _run_generate(pool, payloads, key)


def _run_generate(pool: AdapterPool, payloads: list[GenerateRequest | StaticCompletion],
                  key: SamplingParams) -> list[dict]:  # fmt: skip
    """One ``generate`` over the batch (``/generate`` requests, or ``/v1/`` completions under ``--batching
    static``): the rows share ``key`` (their ``batch_key``), each ends at its own length and stops."""
    each = [p.params if isinstance(p, StaticCompletion) else p.sampling() for p in payloads]
    outputs = generate(pool, [p.prompt for p in payloads], [p.adapter for p in payloads], each)
    return [{"text": o.text, "tokens": o.tokens, "adapter": o.adapter, "finish": o.finish} for o in outputs]


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
                pool.fetch(adapter)  # now (a key's blob on a miss): integrity and base fingerprint checks
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
