"""The server's endpoints, one async function each, registered on ``endpoints`` (``create_app`` includes it).

- ``POST /generate`` (causal-LM base) and ``POST /classify`` (seq-cls base; on a causal-LM base, with a prompt
  ``template``: ``prompt_classify.py``): check the input's size, turn a named ``task`` into its adapter (``auto``
  is routed later, with its batch), resolve the adapter once to its key ``name@version`` (unknown or malformed
  refs fail here, before batching; the batch sees the key only), then queue the request on the batcher and await
  its answer, which names the adapter as the client did.
- ``GET /adapters``, ``POST /adapters/load``, ``POST /adapters/unload``: the pool's adapters and their tier;
  load (``force`` to accept another base) or unload one.
- ``GET /health``: status, base, slots, active alerts and the router's tasks; ``GET /metrics``: Prometheus.

State flows one way: each handler receives the app's ``AppState`` (``StateDep``) and reads the pool, batcher,
router, settings and metrics from it; it keeps nothing of its own. Everything that touches the pool runs on the
batcher's one worker thread (``on_worker``, or the batch itself), between batches. A failure is raised as an
``HTTPError`` (``http_errors.py`` turns it into the answer), so each handler can be called directly in a test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Any

from fastapi import APIRouter, Response

from adapterhub.continual.plan import AUTO
from adapterhub.continual.router import UnknownTaskError
from adapterhub.server.http_errors import HTTPError, http_error, raised_by
from adapterhub.server.prompt_classify import prompt_key, refuse_prompt_fields
from adapterhub.server.schemas import AdapterRequest, ClassifyRequest, GenerateRequest
from adapterhub.server.state import AppState, StateDep
from adapterhub_registry.names import parse_ref

endpoints = APIRouter()


@endpoints.post("/generate")
async def generate(body: GenerateRequest, state: StateDep) -> dict:
    settings = state.settings
    if state.model_task != "causal-lm":
        raise HTTPError(400, f"this server runs a {state.model_task} base; use POST /classify")
    body.max_new_tokens = body.max_new_tokens or min(32, settings.max_new_tokens)
    if body.max_new_tokens > settings.max_new_tokens:
        raise HTTPError(413, f"max_new_tokens {body.max_new_tokens} is over this server's limit of {settings.max_new_tokens} "
                             f"({raised_by('max_new_tokens')}); ask for fewer")  # fmt: skip
    check_input(state, body.prompt)
    choose_task(state, body)
    named = body.adapter
    body.adapter = await check_adapter(state, body.adapter)
    started = time.perf_counter()
    result = await submitted(state, body.sampling().batch_key, body)
    del result["finish"]
    label = "base" if result["adapter"] is None else parse_ref(result["adapter"]).name  # as /v1/ names it
    state.adapter_metrics.request(label)
    state.answered_whole(label, result["tokens"], time.perf_counter() - started)
    return result if named is None else {**result, "adapter": named}


@endpoints.post("/classify")
async def classify(body: ClassifyRequest, state: StateDep) -> dict:
    check_input(state, body.text)
    if state.model_task == "causal-lm":  # classification by prompting: the key carries the checked prompt
        key: Hashable = prompt_key(body, state.pool.base.tokenizer, state.settings.max_input_tokens)
    else:  # seq-cls: the adapter's head classifies
        refuse_prompt_fields(body, state.model_task)
        key = "classify"
    choose_task(state, body)
    named = body.adapter
    body.adapter = await check_adapter(state, body.adapter)
    result = await submitted(state, key, body)
    return result if named is None else {**result, "adapter": named}


@endpoints.get("/adapters")
async def list_adapters(state: StateDep) -> dict:
    pool = state.pool
    return {"slots": pool.slots, "max_rank": pool.max_rank, "adapters": await on_worker(state, pool.describe)}


@endpoints.post("/adapters/load")
async def load_adapter(body: AdapterRequest, state: StateDep) -> dict:
    pool = state.pool

    def load() -> dict:
        key = pool.load(body.ref, force=body.force)
        fetched = pool.fetch(key)
        return {"adapter": key, "kind": fetched.kind, "not_slottable_because": fetched.reason}

    return await on_worker(state, load)


@endpoints.post("/adapters/unload")
async def unload_adapter(body: AdapterRequest, state: StateDep) -> dict:
    return {"unloaded": await on_worker(state, lambda: state.pool.unload(body.ref))}


@endpoints.get("/health")
async def health(state: StateDep) -> dict:
    pool, router = state.pool, state.router
    answer = {"status": "ok", "model_task": state.model_task, "base": pool.base.fingerprint_id, "quantization": pool.base.quantization,
              "slots": pool.slots, "alerts": state.metrics.active_alerts()}  # fmt: skip
    if router is not None:
        answer["router"] = {"sequence": router.sequence, "tasks": {t.name: t.ref for t in router.tasks}}
    return answer


@endpoints.get("/metrics")
async def prometheus(state: StateDep) -> Response:
    return Response(state.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def on_worker(state: AppState, fn: Callable[[], Any]) -> Any:
    """Run pool work on the model thread, between batches."""
    try:
        return await asyncio.get_running_loop().run_in_executor(state.batcher.worker, fn)
    except Exception as exc:
        raise http_error(exc) from None


async def submitted(state: AppState, key: Hashable, payload: Any) -> Any:
    """Queue one request on the batcher and await its answer (batched with others of the same ``key``)."""
    try:
        return await state.batcher.submit(key, payload)
    except Exception as exc:
        raise http_error(exc) from None


def check_input(state: AppState, text: str) -> None:
    tokens = len(state.pool.base.tokenizer(text)["input_ids"])
    if tokens > state.settings.max_input_tokens:
        raise HTTPError(413, f"input is {tokens} tokens; this server takes at most {state.settings.max_input_tokens} "
                             f"({raised_by('max_input_tokens')})")  # fmt: skip


async def check_adapter(state: AppState, ref: str | None) -> str | None:
    """``ref``'s key ``name@version`` (None: the base): the one registry look-up of a request, on the model thread.
    Unknown or malformed refs fail here, before batching."""
    if ref is None:
        return None
    return await on_worker(state, lambda: state.pool.key_of(ref))


def choose_task(state: AppState, body: GenerateRequest | ClassifyRequest) -> None:
    """A named task becomes its adapter now; ``auto`` is routed with the rest of its batch."""
    if body.task is None:
        return
    if state.router is None:
        raise HTTPError(
            400, "this server has no task router (start it with --router SEQUENCE); name an adapter instead"
        )
    if body.adapter is not None:
        raise HTTPError(400, f"the request names both adapter {body.adapter!r} and task {body.task!r}; give one")
    if body.task != AUTO:
        try:
            body.adapter = state.router.ref_for(body.task)
        except UnknownTaskError as exc:
            raise http_error(exc) from None
