"""OpenAI-compatible routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``, with
the extras of vLLM's that its clients use (lm-evaluation-harness, benchmark load generators).

``model`` names what serves the request: the base (``--model-name``, default the base's directory or file
name), a ``lora_name`` loaded with ``/v1/load_lora_adapter``, or a registry ref (``name``, ``name@3``,
``name:tag``). The ref is resolved once, when the request arrives (``resolve_model``): from then on the request
carries the immutable ``name@version``, so a tag moved in the registry is picked up by the next request and
never in the middle of one.

A completions ``prompt`` is a string, a list of strings, a list of token ids or a list of such lists; each prompt
becomes ``n`` rows of the engine (``Row``), submitted together so rows of one prompt share its prefill, and
answered as choices in vLLM's order (``index = prompt * n + j``). Rows stream their events into one queue
(``Rows``): a whole answer gathers them, a stream sends each as a chunk of its choice. ``echo`` puts the prompt
first in a choice (its text, and its tokens' log-probabilities when ``logprobs`` is set, the first one null),
which is how lm-evaluation-harness scores a continuation.

Every limit is checked before the request queues (prompt length, ``max_tokens``, the model's context, the
queue's depth), and an unknown model is a 404 there too. With ``--batching continuous`` (the default) the
request runs on the continuous-batching engine and its tokens are streamed as the engine makes them; with
``--batching static`` it waits for a batch of the static batcher and is answered whole (one chunk per choice
when streamed), which is what that batcher can do, kept to compare against: it serves one plain choice per
prompt, so ``n``, ``logprobs``, ``echo``, penalties and ``logit_bias`` are a 400 there.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from adapterhub.runtime.continuous import EngineRequest, Event
from adapterhub.runtime.sampling import SamplingParams
from adapterhub.server.batch_runs import StaticCompletion
from adapterhub.server.engine_driver import Submitted
from adapterhub.server.handlers import submitted
from adapterhub.server.http_errors import HTTPError, http_error, raised_by
from adapterhub.server.openai_answers import DONE, Answer, LogprobWriter, sse, usage
from adapterhub.server.openai_schemas import ChatCompletionRequest, ChatMessage, CompletionRequest, _Sampled
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


@dataclass
class Prompt:
    tokens: list[int]
    text: str  # what an echo writes: the prompt as sent, or its token ids decoded


@openai_endpoints.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, state: StateDep) -> Response:
    check_text_base(state)
    body.check(vocabulary_size(state))
    prompts = [prompt_of(state, one) for one in body.prompts]
    return await _serve(state, request, body, prompts, Answer(chat=False, model=body.model), COMPLETION_DEFAULT_TOKENS)


@openai_endpoints.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, state: StateDep) -> Response:
    check_text_base(state)
    body.check(vocabulary_size(state))
    tokens = chat_prompt(state, body.messages)
    prompt = Prompt(tokens, "")
    return await _serve(
        state, request, body, [prompt], Answer(chat=True, model=body.model), state.settings.max_new_tokens
    )


def vocabulary_size(state: AppState) -> int:
    """How many token ids the base's embedding has rows for: a prompt's or a logit bias's ids must be below."""
    return state.pool.base.model.get_input_embeddings().num_embeddings


def prompt_of(state: AppState, prompt: str | list[int]) -> Prompt:
    """One prompt as token ids (text encoded as ``/tokenize`` does); an id outside the vocabulary is a 400."""
    tokenizer = state.pool.base.tokenizer
    if isinstance(prompt, str):
        return Prompt(tokenizer(prompt)["input_ids"], prompt)
    vocabulary = vocabulary_size(state)
    outside = [t for t in prompt if not 0 <= t < vocabulary]
    if outside:
        raise HTTPError(400, f"prompt: token ids {outside[:5]} are outside the vocabulary (0..{vocabulary - 1}); "
                             f"encode text with POST /tokenize", param="prompt")  # fmt: skip
    return Prompt(list(prompt), tokenizer.decode(prompt))


def chat_prompt(state: AppState, messages: list[ChatMessage], add_generation_prompt: bool = True) -> list[int]:
    """The token ids of ``messages`` written by the base's chat template."""
    tokenizer = state.pool.base.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise HTTPError(400, f"the base {state.settings.model_name!r} has no chat template; send the prompt as text to "
                             f"/v1/completions", param="messages")  # fmt: skip
    try:
        template_messages = [m.as_template_message() for m in messages]
        text = tokenizer.apply_chat_template(
            template_messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # a template may refuse an order of roles it does not support
        raise HTTPError(400, f"the chat template refused these messages: {exc}", param="messages") from None
    return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template wrote the special tokens


def check_text_base(state: AppState) -> None:
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


def _check_limits(state: AppState, prompt: list[int], max_tokens: int, param: str = "prompt") -> None:
    settings = state.settings
    if not prompt:
        raise HTTPError(400, "the prompt encodes to no tokens; send some text", param=param)
    if len(prompt) > settings.max_input_tokens:
        raise HTTPError(400, f"the prompt is {len(prompt)} tokens; this server takes at most {settings.max_input_tokens} "
                             f"({raised_by('max_input_tokens')})", param=param, code="context_length_exceeded")  # fmt: skip
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


@dataclass
class Row:
    """One choice: its index in the answer, its prompt, its request in the engine, and what it made so far."""

    index: int
    prompt: Prompt
    submitted: Submitted
    text: str = ""
    scored: list = field(default_factory=list)  # completions: Scored pairs; chat: TokenLogprob
    offset: int = 0  # completions: characters of this choice's text before its next logprobs' tokens
    opened: bool = False  # its first event was taken


class Rows:
    """The events of every row of one request on one queue, as they come; ``close`` cancels the rows left."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows, self.unfinished = rows, len(rows)
        self.queue: asyncio.Queue[tuple[Row, Event]] = asyncio.Queue()
        self.pumps = [asyncio.ensure_future(self._pump(row)) for row in rows]

    async def _pump(self, row: Row) -> None:
        async for event in row.submitted.events():
            self.queue.put_nowait((row, event))

    async def next(self, request: Request | None = None) -> tuple[Row, Event]:
        """The next event of any row; with ``request``, a client that disconnects meanwhile cancels every row
        (``ClientGone``)."""
        row, event = await (self.queue.get() if request is None else self._polled(request))
        if event.finish is not None:
            self.unfinished -= 1
        return row, event

    async def _polled(self, request: Request) -> tuple[Row, Event]:
        waiting = asyncio.ensure_future(self.queue.get())
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
                if done:
                    return waiting.result()
                if await request.is_disconnected():
                    self.close()
                    raise ClientGone()
        finally:
            if not waiting.done():
                waiting.cancel()

    def close(self) -> None:
        for row in self.rows:
            row.submitted.engine_request.cancel()  # a no-op once it finished
        for pump in self.pumps:
            pump.cancel()

    @property
    def completion_tokens(self) -> int:
        return sum(len(row.submitted.engine_request.generated) for row in self.rows)


async def _serve(state: AppState, request: Request, body: _Sampled, prompts: list[Prompt], answer: Answer,
                 default_tokens: int) -> Response:  # fmt: skip
    adapter, label = await resolve_model(state, request.scope.get(RESOLVED_MODEL, body.model))
    params = body.sampling(min(default_tokens, state.settings.max_new_tokens))
    for prompt in prompts:
        _check_limits(state, prompt.tokens, params.max_tokens, "messages" if answer.chat else "prompt")
    if len(prompts) * body.n > state.settings.max_waiting:
        raise HTTPError(400, f"{len(prompts)} prompt(s) x n={body.n} is {len(prompts) * body.n} rows; this server queues at "
                             f"most {state.settings.max_waiting} ({raised_by('max_waiting')}); send fewer per request",
                        param="n" if body.n > 1 else "prompt")  # fmt: skip
    state.adapter_metrics.request(label)
    prompt_tokens = sum(len(p.tokens) for p in prompts)
    if state.engine is None:
        return await _serve_static(state, body, prompts, adapter, label, params, answer)
    requests = [EngineRequest(p.tokens, adapter, params) for p in prompts for _ in range(body.n)]
    running = state.driver.submit_many(requests, label)
    rows = Rows([Row(i, prompts[i // body.n], s) for i, s in enumerate(running)])
    writer = LogprobWriter(state.pool.base.tokenizer, params.logprobs or 0)
    try:
        first = await rows.next(request)  # errors found before the first token are a plain error answer
    except BaseException:
        rows.close()
        raise
    if first[1].error is not None:
        rows.close()
        raise http_error(first[1].error)
    if body.stream:
        return StreamingResponse(_streamed(first, rows, answer, body, writer, prompt_tokens),
                                 media_type="text/event-stream")  # fmt: skip
    try:
        return _json(await _whole(first, rows, request, answer, body, writer, prompt_tokens))
    finally:
        rows.close()


def _take(row: Row, event: Event, body: _Sampled) -> tuple[str, list]:
    """What ``event`` adds to ``row``'s choice: its text (after the prompt's, for the first event of an echo)
    and its scored tokens (the prompt's first, when echoed with logprobs)."""
    text, scored = event.text, []
    if body.top_logprobs_wanted is not None:
        scored = (
            list(event.logprobs) if isinstance(body, ChatCompletionRequest) else [(s.token, s) for s in event.logprobs]
        )
    if not row.opened and body.echoed:
        text = row.prompt.text + text
        if event.prompt_logprobs is not None and body.top_logprobs_wanted is not None:
            scored = list(zip(row.prompt.tokens, event.prompt_logprobs)) + scored
    row.opened = True
    return text, scored


def _logprobs(row: Row, scored: list, writer: LogprobWriter, body: _Sampled) -> dict | None:
    """The choice's ``logprobs`` object for ``scored``; None when the request did not ask for them."""
    if body.top_logprobs_wanted is None:
        return None
    if isinstance(body, ChatCompletionRequest):
        return writer.chat(scored)
    shaped, row.offset = writer.completion(scored, row.offset)
    return shaped


async def _whole(first: tuple[Row, Event], rows: Rows, request: Request, answer: Answer, body: _Sampled,
                 writer: LogprobWriter, prompt_tokens: int) -> dict:  # fmt: skip
    finishes: dict[int, str] = {}
    row, event = first
    while True:
        if event.error is not None:
            raise http_error(event.error)
        text, scored = _take(row, event, body)
        row.text, row.scored = row.text + text, row.scored + scored
        if event.finish is not None:
            finishes[row.index] = event.finish
        if not rows.unfinished:
            break
        row, event = await rows.next(request)
    choices = [
        answer.choice(r.index, r.text, finishes[r.index], _logprobs(r, r.scored, writer, body)) for r in rows.rows
    ]
    return answer.whole(choices, usage(prompt_tokens, rows.completion_tokens))


async def _streamed(first: tuple[Row, Event], rows: Rows, answer: Answer, body: _Sampled, writer: LogprobWriter,
                    prompt_tokens: int) -> AsyncIterator[str]:  # fmt: skip
    """The server-sent events of one request; a client that goes away cancels its rows."""
    try:
        row, event = first
        while True:
            if event.error is not None:
                message = str(http_error(event.error).detail)
                yield sse({"error": {"message": message, "type": "server_error", "param": None, "code": None}})
                break
            opening = not row.opened
            text, scored = _take(row, event, body)
            done = not rows.unfinished
            used = usage(prompt_tokens, rows.completion_tokens) if done else None
            if text or scored or event.finish or opening:
                yield answer.chunk(row.index, text, event.finish, first=opening, logprobs=_logprobs(row, scored, writer, body),
                                   used=None if body.include_usage else used)  # fmt: skip
            if done:
                if body.include_usage:
                    yield answer.usage_chunk(used)
                break
            row, event = await rows.next()
        yield DONE
    finally:
        rows.close()  # frees the rows when the client left mid-stream


async def _serve_static(state: AppState, body: _Sampled, prompts: list[Prompt], adapter: str | None, label: str,
                        params: SamplingParams, answer: Answer) -> Response:  # fmt: skip
    """``--batching static``: each prompt one row of a batch of the static batcher, answered whole (one chunk per
    choice when streamed)."""
    refused = body.static_refused
    if refused:
        raise HTTPError(400, f"{', '.join(refused)}: not served with `adapterhub serve --batching static`, which answers "
                             f"one plain choice per prompt; serve with --batching continuous (the default)",
                        param=refused[0])  # fmt: skip
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(
        *(submitted(state, params.batch_key, StaticCompletion(p.tokens, adapter, params)) for p in prompts)
    )
    for result in results:
        state.answered_whole(label, result["tokens"], loop.time() - started)
    used = usage(sum(len(p.tokens) for p in prompts), sum(r["tokens"] for r in results))
    if not body.stream:
        return _json(answer.whole([answer.choice(i, r["text"], r["finish"]) for i, r in enumerate(results)], used))
    last = len(results) - 1
    stream = [answer.chunk(i, r["text"], r["finish"], first=True, used=None if body.include_usage or i < last else used)
              for i, r in enumerate(results)]  # fmt: skip
    stream += [answer.usage_chunk(used)] if body.include_usage else []
    return StreamingResponse(iter(stream + [DONE]), media_type="text/event-stream")


def _json(payload: dict) -> Response:
    return JSONResponse(payload)
