"""The `serving` suite's baseline: what a user writes to serve many LoRA adapters without adapterhub.

A minimal FastAPI app with plain transformers + peft: every adapter loaded into one `PeftModel`
(`load_adapter`), `set_adapter` per request, one request at a time (an asyncio lock: a `PeftModel` has one active
adapter, so two requests cannot share it), `model.generate` on a thread with transformers' `TextIteratorStreamer`
for streaming. It answers the same OpenAI `/v1/completions` as `adapterhub serve` (streamed and not, vLLM's
`ignore_eos` / `min_tokens`), so one load generator drives both.

    python -m benchmarks.serving_baseline --base PATH --registry ROOT --adapters a0,a1 --port 8100

Adapters come out of the registry as PEFT directories (`Registry.export_peft`), as a user would have them; a
GGUF base is read from adapterhub's dequantized copy of it, so both servers run the very same weights.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import click
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """OpenAI's completions body (fields this server does not use, such as `top_p`, are ignored, as OpenAI-style
    servers do) plus vLLM's `ignore_eos` and `min_tokens`."""

    model_config = ConfigDict(extra="ignore")
    model: str
    prompt: str = Field(min_length=1)
    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)


@dataclass(frozen=True)
class Limits:
    max_input_tokens: int = 512
    max_new_tokens: int = 256


class RequestRefused(Exception):
    """A request this server will not run; answered as OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def answer(self) -> JSONResponse:
        error = {"message": self.message, "type": "invalid_request_error", "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status)


class _Stopped:
    """A stopping criterion that ends `generate` once the client has gone (the next request need not wait)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Generation:
    """One `model.generate` on a thread, its text streamed out through `TextIteratorStreamer`."""

    def __init__(self, model, tokenizer, adapter: str | None, input_ids, settings: dict) -> None:
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        self.streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stop = threading.Event()
        self.new_tokens = 0
        self.error: BaseException | None = None
        self._prompt_length = input_ids.shape[-1]
        self._args = (
            model,
            adapter,
            input_ids,
            {**settings, "stopping_criteria": StoppingCriteriaList([_Stopped(self.stop)])},
        )
        self.thread = threading.Thread(target=self._generate, name="baseline-generate", daemon=True)
        self.thread.start()

    def _generate(self) -> None:
        import torch

        model, adapter, input_ids, settings = self._args
        try:
            with torch.inference_mode():
                if adapter is None:
                    with model.disable_adapter():
                        output = model.generate(input_ids=input_ids, streamer=self.streamer, **settings)
                else:
                    model.set_adapter(adapter)
                    output = model.generate(input_ids=input_ids, streamer=self.streamer, **settings)
            self.new_tokens = output.shape[-1] - self._prompt_length
        except (
            BaseException
        ) as exc:  # reported to the request; the streamer must still end, or its reader waits forever
            self.error = exc
            self.streamer.end()

    async def texts(self) -> AsyncIterator[str]:
        """The new text as the streamer releases it (whole words), read on a worker thread."""
        from starlette.concurrency import iterate_in_threadpool

        async for text in iterate_in_threadpool(self.streamer):
            if text:
                yield text

    def finish(self) -> None:
        """Stop generating (a no-op once done) and wait for the thread: at most one more decoding step."""
        self.stop.set()
        self.thread.join()


def _chunk(ident: str, model: str, created: int, text: str, finish_reason: str | None) -> dict:
    return {"id": ident, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}]}  # fmt: skip


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def create_app(model, tokenizer, adapters: dict[str, str], base_name: str, limits: Limits = Limits()) -> FastAPI:
    """The app serving `model` (a PeftModel holding every adapter): `adapters` maps a request's `model` (a
    registry ref) to its peft adapter name; `base_name` asks for the base without adapter."""
    app = FastAPI(title="transformers + peft baseline")
    lock = asyncio.Lock()  # one request at a time: the PeftModel has one active adapter

    @app.exception_handler(RequestRefused)
    async def refused(request: Request, exc: RequestRefused) -> JSONResponse:
        return exc.answer()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    def prepare(body: CompletionRequest) -> tuple[str | None, object, dict]:
        if body.model != base_name and body.model not in adapters:
            served = ", ".join([base_name, *adapters])
            raise RequestRefused(
                404, f"model {body.model!r} is not served here; served: {served}", "model", "model_not_found"
            )
        if body.max_tokens > limits.max_new_tokens:
            raise RequestRefused(400, f"max_tokens {body.max_tokens} is over this server's limit of {limits.max_new_tokens}; ask for fewer",
                                 "max_tokens", "max_tokens_too_large")  # fmt: skip
        if body.min_tokens > body.max_tokens:
            raise RequestRefused(
                400,
                f"min_tokens {body.min_tokens} is more than max_tokens {body.max_tokens}",
                "min_tokens",
                "invalid_min_tokens",
            )
        input_ids = tokenizer(body.prompt, return_tensors="pt").input_ids
        if input_ids.shape[-1] > limits.max_input_tokens:
            raise RequestRefused(400, f"the prompt is {input_ids.shape[-1]} tokens, over this server's limit of "
                                      f"{limits.max_input_tokens}; shorten it", "prompt", "prompt_too_long")  # fmt: skip
        # transformers has no ignore_eos: suppressing EOS until max_tokens (min_new_tokens) is the same thing.
        settings = {"max_new_tokens": body.max_tokens, "min_new_tokens": body.max_tokens if body.ignore_eos else body.min_tokens,
                    "do_sample": body.temperature > 0, "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id}  # fmt: skip
        if body.temperature > 0:
            settings["temperature"] = body.temperature
        return (None if body.model == base_name else adapters[body.model]), input_ids, settings

    def start(body: CompletionRequest, adapter, input_ids, settings) -> Generation:
        if body.seed is not None:
            import torch

            torch.manual_seed(body.seed)  # under the lock: no other request draws from the generator meanwhile
        return Generation(model, tokenizer, adapter, input_ids, settings)

    def usage(prompt_tokens: int, generation: Generation) -> dict:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": generation.new_tokens,
            "total_tokens": prompt_tokens + generation.new_tokens,
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        adapter, input_ids, settings = prepare(body)
        ident, created, prompt_tokens = f"cmpl-{uuid.uuid4().hex}", int(time.time()), input_ids.shape[-1]

        if not body.stream:
            async with lock:
                generation = start(body, adapter, input_ids, settings)
                try:
                    text = "".join([piece async for piece in generation.texts()])
                finally:
                    generation.finish()
            if generation.error is not None:
                raise generation.error
            reason = "length" if generation.new_tokens >= body.max_tokens else "stop"
            return {**_chunk(ident, body.model, created, text, reason), "usage": usage(prompt_tokens, generation)}

        async def events() -> AsyncIterator[str]:
            async with lock:
                generation = start(body, adapter, input_ids, settings)
                try:
                    async for piece in generation.texts():
                        yield _sse(_chunk(ident, body.model, created, piece, None))
                finally:
                    generation.finish()  # also when the client went away: the next request must not share the model
            if generation.error is not None:
                error = {
                    "message": f"generation failed: {generation.error}",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
                yield _sse({"error": error})
                return
            reason = "length" if generation.new_tokens >= body.max_tokens else "stop"
            yield _sse(_chunk(ident, body.model, created, "", reason))
            if body.stream_options is not None and body.stream_options.include_usage:
                yield _sse({"id": ident, "object": "text_completion", "created": created, "model": body.model, "choices": [],
                            "usage": usage(prompt_tokens, generation)})  # fmt: skip
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def load_model(base: str, registry_root: str | Path, refs: list[str]):
    """`(PeftModel with every adapter, tokenizer, {ref: peft adapter name})`: the base from transformers, each
    adapter exported from the registry as a PEFT directory and loaded with `load_adapter`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapterhub_registry import Registry
    from benchmarks.models import transformers_dir

    if not refs:
        raise click.UsageError("--adapters names no adapter; give registry refs separated by commas, e.g. a0,a1")
    directory = transformers_dir(base)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    names = {ref: f"adapter{i}" for i, ref in enumerate(refs)}  # peft adapter names may not hold '.', which refs may
    registry = Registry(registry_root)
    with tempfile.TemporaryDirectory(prefix="baseline-adapters-") as scratch:
        for i, ref in enumerate(refs):
            exported = registry.export_peft(ref, Path(scratch) / names[ref])
            if i == 0:
                model = PeftModel.from_pretrained(model, exported, adapter_name=names[ref]).eval()
            else:
                model.load_adapter(exported, adapter_name=names[ref])
    registry.close()
    return model, tokenizer, names


@click.command("serving-baseline")
@click.option("--base", required=True, help="Base model directory or .gguf file.")
@click.option("--registry", "registry_root", required=True, help="Registry root the adapters are exported from.")
@click.option("--adapters", required=True, help="Registry refs to serve, separated by commas (a request's `model`).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8100, show_default=True)
@click.option("--max-input-tokens", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
def main(base, registry_root, adapters, host, port, max_input_tokens, max_new_tokens) -> None:
    """Serve OpenAI /v1/completions with plain transformers + peft, one request at a time."""
    import uvicorn

    from adapterhub.errors import AdapterHubError
    from adapterhub_registry import RegistryError

    refs = [ref.strip() for ref in adapters.split(",") if ref.strip()]
    try:
        model, tokenizer, names = load_model(base, registry_root, refs)
    except (AdapterHubError, RegistryError) as exc:  # a missing base or adapter: one line, not a traceback
        raise click.ClickException(str(exc)) from None
    app = create_app(model, tokenizer, names, Path(base).stem, Limits(max_input_tokens, max_new_tokens))
    uvicorn.run(app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
