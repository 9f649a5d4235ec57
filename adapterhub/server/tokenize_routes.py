"""vLLM's tokenizer endpoints: ``POST /tokenize``, ``POST /detokenize`` and ``GET /tokenizer_info``, so a client
(a load generator counting tokens, an evaluation sending token ids) needs no copy of the base's tokenizer.

Every adapter of this server shares the base's tokenizer, so ``model`` only has to name something this server
serves (the same ``resolve_model`` as ``/v1/``, a 404 when it does not); it may be left out. The shapes are
vLLM's (``serving_tokenization.py``): ``{count, max_model_len, tokens}``, ``{prompt}``, and the tokenizer's own
configuration for ``/tokenizer_info``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field, StrictInt, model_validator

from adapterhub.server.http_errors import HTTPError
from adapterhub.server.openai_routes import (
    chat_prompt,
    check_text_base,
    prompt_of,
    resolve_model,
    vocabulary_size,
)
from adapterhub.server.openai_schemas import ChatMessage
from adapterhub.server.state import AppState, StateDep

tokenize_endpoints = APIRouter()


class TokenizeRequest(BaseModel):
    """vLLM's two bodies in one: ``prompt`` (a completion's text) or ``messages`` (written by the chat template)."""

    model: str | None = None
    prompt: str | None = None
    add_special_tokens: bool | None = Field(default=None, description="Default: true for prompt, false for messages.")
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_of(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send either prompt (text) or messages (a chat), not both nor neither")
        return self


class DetokenizeRequest(BaseModel):
    model: str | None = None
    tokens: list[StrictInt]


@tokenize_endpoints.post("/tokenize")
async def tokenize(body: TokenizeRequest, state: StateDep) -> dict:
    await _check_model(state, body.model)
    tokenizer = state.pool.base.tokenizer
    if body.messages is not None:
        tokens = chat_prompt(state, body.messages, body.add_generation_prompt)
        if body.add_special_tokens:
            tokens = tokenizer.build_inputs_with_special_tokens(tokens)
    elif body.add_special_tokens is False:
        tokens = tokenizer(body.prompt, add_special_tokens=False)["input_ids"]
    else:
        tokens = prompt_of(state, body.prompt or "").tokens
    strings = tokenizer.convert_ids_to_tokens(tokens) if body.return_token_strs else None
    return {"count": len(tokens), "max_model_len": state.context_length, "tokens": tokens, "token_strs": strings}


@tokenize_endpoints.post("/detokenize")
async def detokenize(body: DetokenizeRequest, state: StateDep) -> dict:
    await _check_model(state, body.model)
    vocabulary = vocabulary_size(state)
    outside = [t for t in body.tokens if not 0 <= t < vocabulary]
    if outside:
        raise HTTPError(
            400, f"tokens: ids {outside[:5]} are outside the vocabulary (0..{vocabulary - 1})", param="tokens"
        )
    return {"prompt": state.pool.base.tokenizer.decode(body.tokens)}


@tokenize_endpoints.get("/tokenizer_info")
async def tokenizer_info(state: StateDep) -> dict:
    """The tokenizer's configuration as ``tokenizer_config.json`` states it (special tokens as strings), its class,
    and its chat template, as vLLM's ``/tokenizer_info`` answers."""
    check_text_base(state)
    tokenizer = state.pool.base.tokenizer
    info: dict[str, Any] = {key: _plain(value) for key, value in tokenizer.init_kwargs.items()}
    info.update(
        tokenizer_class=type(tokenizer).__name__,
        model_max_length=tokenizer.model_max_length,
        chat_template=getattr(tokenizer, "chat_template", None),
        **{name: getattr(tokenizer, name) for name in ("bos_token", "eos_token", "pad_token", "unk_token")},
    )
    return info


def _plain(value: Any) -> Any:
    """A value of the tokenizer's configuration as JSON: an ``AddedToken`` as its text, anything else unknown to
    JSON as its ``str``."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return getattr(value, "content", None) or str(value)


async def _check_model(state: AppState, model: str | None) -> None:
    check_text_base(state)
    if model is not None:
        await resolve_model(state, model)
