"""OpenAI-compatible routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``.

``model`` names what serves the request: the base (``--model-name``, default the base's directory or file
name), a ``lora_name`` loaded with ``/v1/load_lora_adapter``, or a registry ref (``name``, ``name@3``,
``name:tag``). The ref is resolved once, when the request arrives (``resolve_model``): from then on the request
carries the immutable ``name@version``, so a tag moved in the registry is picked up by the next request and
never in the middle of one.

Every limit is checked before the request queues (prompt length, ``max_tokens``, the model's context, the
queue's depth), and an unknown model is a 404 there too. With ``--batching continuous`` (the default) the
request becomes a ``EngineRequest`` of the continuous-batching engine and its tokens are streamed as the engine
makes them; with ``--batching static`` it waits for a batch of the static batcher and is answered whole (one
chunk when streamed), which is what that batcher can do, kept to compare against.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from adapterhub.runtime.continuous import EngineRequest, Event
from adapterhub.server.batch_runs import StaticCompletion
from adapterhub.server.engine_driver import Submitted
from adapterhub.server.handlers import submitted
from adapterhub.server.http_errors import HTTPError, http_error, raised_by
from adapterhub.server.openai_answers import DONE, Answer, sse, usage
from adapterhub.server.openai_schemas import ChatCompletionRequest, CompletionRequest, _Sampled
from adapterhub.server.state import AppState, StateDep
from adapterhub_registry import InvalidNameError, NotFoundError

openai_endpoints = APIRouter()
COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
DISCONNECT_POLL_S = 0.25
RESOLVED_MODEL = "adapterhub.resolved_model"  # ASGI scope key: the name@version an ingress already resolved
# (Ray Serve replicas, server/ray_serve/); only set in-process, never from a request, so a client cannot set it


class ClientGone(Exception):
    """The client closed the connection while its request waited: the request was cancelled."""


@openai_endpoints.get("/v1/models")
async def list_models(state: StateDep) -> dict:
    """The base, every loaded ``lora_name``, and the newest version of every registry adapter for this base."""
    base = state.settings.model_name
    cards = [{"id": base, "object": "model", "created": 0, "owned_by": "adapterhub", "root": base, "parent": None,
              "fingerprint": state.pool.base.fingerprint_id}]  # fmt: skip
    records = {r.ref: r for r in state.pool.registry.list(base_fingerprint=state.pool.base.fingerprint_id)}
    for name, key in state.lora_names.items():
        records.setdefault(key, state.pool.registry.resolve(key))
        cards.append(_card(name, records[key], base))
    cards += [_card(r.name, r, base) for r in records.values() if r.name not in state.lora_names]
    return {"object": "list", "data": cards}


def _card(model_id: str, record, base: str) -> dict:
    return {"id": model_id, "object": "model", "created": int(record.created_at), "owned_by": "adapterhub",
            "root": record.ref, "parent": base, "version": record.version, "tags": list(record.tags),
            "method": record.method}  # fmt: skip


@openai_endpoints.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, state: StateDep) -> Response:
    _check_text_base(state)
    prompt = state.pool.base.tokenizer(body.text)["input_ids"]
    return await _serve(state, request, body, prompt, Answer(chat=False, model=body.model), COMPLETION_DEFAULT_TOKENS)


@openai_endpoints.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, state: StateDep) -> Response:
    _check_text_base(state)
    tokenizer = state.pool.base.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise HTTPError(400, f"the base {state.settings.model_name!r} has no chat template; send the prompt as text to "
                             f"/v1/completions", param="messages")  # fmt: skip
    try:
        messages = [m.as_template_message() for m in body.messages]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # a template may refuse an order of roles it does not support
        raise HTTPError(400, f"the chat template refused these messages: {exc}", param="messages") from None
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]  # the template wrote the special tokens
    return await _serve(
        state, request, body, prompt, Answer(chat=True, model=body.model), state.settings.max_new_tokens
    )


def _check_text_base(state: AppState) -> None:
    if state.model_task != "causal-lm":
        raise HTTPError(400, f"this server runs a {state.model_task} base; use POST /classify", param="model")


async def resolve_model(state: AppState, model: str) -> tuple[str | None, str]:
    """``model`` -> (adapter key ``name@version`` or None for the base, the adapter's name for metrics)."""
    if model == state.settings.model_name:
        return None, "base"
    if model in state.lora_names:
        key = state.lora_names[model]
        return key, key.partition("@")[0]
    try:
        record = await state.record_of(model)
    except (NotFoundError, InvalidNameError):
        raise HTTPError(404, f"The model `{model}` does not exist: it is neither this server's base "
                             f"({state.settings.model_name!r}) nor an adapter in its registry. List them with GET /v1/models",
                        param="model", code="model_not_found") from None  # fmt: skip
    return record.ref, record.name


def _check_limits(state: AppState, prompt: list[int], max_tokens: int) -> None:
    settings = state.settings
    if not prompt:
        raise HTTPError(400, "the prompt encodes to no tokens; send some text", param="prompt")
    if len(prompt) > settings.max_input_tokens:
        raise HTTPError(400, f"the prompt is {len(prompt)} tokens; this server takes at most {settings.max_input_tokens} "
                             f"({raised_by('max_input_tokens')})", param="messages", code="context_length_exceeded")  # fmt: skip
    if max_tokens > settings.max_new_tokens:
        raise HTTPError(400, f"max_tokens {max_tokens} is over this server's limit of {settings.max_new_tokens} "
                             f"({raised_by('max_new_tokens')}); ask for fewer", param="max_tokens")  # fmt: skip
    context = state.context_length
    if context is not None and len(prompt) + max_tokens > context:
        raise HTTPError(400, f"the prompt ({len(prompt)} tokens) plus max_tokens ({max_tokens}) is over the model's context "
                             f"of {context} tokens; ask for fewer tokens", param="max_tokens", code="context_length_exceeded")  # fmt: skip
    if state.engine is not None and state.engine.queued >= settings.max_waiting:
        raise HTTPError(
            503,
            f"the server is at capacity ({settings.max_waiting} requests waiting, {raised_by('max_waiting')}); retry later",
            code="overloaded",
        )


async def _serve(state: AppState, request: Request, body: _Sampled, prompt: list[int], answer: Answer,
                 default_tokens: int) -> Response:  # fmt: skip
    adapter, label = await resolve_model(state, request.scope.get(RESOLVED_MODEL, body.model))
    params = body.sampling(min(default_tokens, state.settings.max_new_tokens))
    _check_limits(state, prompt, params.max_tokens)
    state.adapter_metrics.request(label)
    if state.engine is None:
        return await _serve_static(state, body, prompt, adapter, label, params, answer)
    running = state.driver.submit(EngineRequest(prompt, adapter, params), label)
    events = running.events()
    first = await _next(events, request, running)  # errors found before the first token are a plain error answer
    if first.error is not None:
        raise http_error(first.error)
    if body.stream:
        return StreamingResponse(_streamed(first, events, running, answer, body.include_usage, len(prompt)),
                                 media_type="text/event-stream")  # fmt: skip
    text, last = first.text, first
    while last.finish is None:
        last = await _next(events, request, running)
        text += last.text
    if last.error is not None:
        raise http_error(last.error)
    return _json(answer.whole(text, last.finish, usage(len(prompt), len(running.engine_request.generated))))


async def _streamed(first: Event, events: AsyncIterator[Event], running: Submitted, answer: Answer,
                    include_usage: bool, prompt_tokens: int) -> AsyncIterator[str]:  # fmt: skip
    """The server-sent events of one request; a client that goes away cancels the request (its row is freed)."""
    try:
        event, opening = first, True
        while True:
            if event.error is not None:
                yield sse(
                    {
                        "error": {
                            "message": str(http_error(event.error).detail),
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    }
                )
                break
            used = usage(prompt_tokens, len(running.engine_request.generated)) if event.finish else None
            if event.text or event.finish or opening:
                yield answer.chunk(event.text, event.finish, first=opening, used=None if include_usage else used)
                opening = False
            if event.finish:
                if include_usage:
                    yield answer.usage_chunk(used)
                break
            event = await anext(events)
        yield DONE
    finally:
        running.engine_request.cancel()  # a no-op once it finished; frees the row when the client left mid-stream


async def _next(events: AsyncIterator[Event], request: Request, running: Submitted) -> Event:
    """The request's next event; if the client disconnects while waiting, cancel the request (``ClientGone``)."""
    waiting = asyncio.ensure_future(anext(events))
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
            if done:
                return waiting.result()
            if await request.is_disconnected():
                running.engine_request.cancel()
                raise ClientGone()
    finally:
        if not waiting.done():
            waiting.cancel()


async def _serve_static(state: AppState, body: _Sampled, prompt: list[int], adapter: str | None, label: str, params,
                        answer: Answer) -> Response:  # fmt: skip
    """``--batching static``: one batch of the static batcher, answered whole (one chunk when streamed)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await submitted(state, params, StaticCompletion(prompt, adapter, params))
    state.answered_whole(label, result["tokens"], loop.time() - started)
    used = usage(len(prompt), result["tokens"])
    if not body.stream:
        return _json(answer.whole(result["text"], result["finish"], used))
    stream = [answer.chunk(result["text"], result["finish"], first=True, used=None if body.include_usage else used)]
    stream += [answer.usage_chunk(used)] if body.include_usage else []
    return StreamingResponse(iter(stream + [DONE]), media_type="text/event-stream")


def _json(payload: dict) -> Response:
    return JSONResponse(payload)
