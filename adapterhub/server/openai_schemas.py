"""The bodies of the OpenAI-compatible routes: OpenAI's fields, vLLM's ``ignore_eos`` and ``min_tokens``.

Fields OpenAI defines that this server does not implement are refused with a 400 naming the field when a
request sets them to anything but their neutral value (``n`` > 1, ``logprobs``, penalties, tools, ...), so a
client never silently gets something other than what it asked for. Fields nobody defines are ignored, as
OpenAI-compatible servers do (clients and SDKs add their own).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapterhub.runtime.sampling import SamplingParams

NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (None, 1), "best_of": (None, 1), "echo": (None, False), "logprobs": (None, False, 0), "top_logprobs": (None, 0),
    "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "logit_bias": (None, {}), "suffix": (None, ""),
    "tools": (None, []), "functions": (None, []), "response_format": (None, {"type": "text"}), "use_beam_search": (None, False),
}  # fmt: skip


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampled(BaseModel):
    """What completions and chat completions share."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(
        min_length=1, description="A registry ref (name, name@3, name:tag), a loaded lora_name, or the base's name."
    )
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=-1, description="vLLM's extra; 0 or -1: no top-k filter.")
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _refuse_unimplemented(self) -> _Sampled:
        for name, value in (self.model_extra or {}).items():
            if name in NEUTRAL and value not in NEUTRAL[name]:
                raise ValueError(f"{name}={value!r} is not supported by this server (it serves one choice, no "
                                 f"logprobs, no penalties or tools); leave it out")  # fmt: skip
        if len(self.stops) > 4 or any(not s for s in self.stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        max_tokens = self.max_tokens or default_max_tokens
        return SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=max(self.top_k, 0), seed=self.seed, stop=self.stops, ignore_eos=self.ignore_eos,
                              min_tokens=min(self.min_tokens, max_tokens))  # fmt: skip

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Sampled):
    prompt: str | list[str] = Field(description="One prompt (a list of one string is accepted).")

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError(
                f"prompt: this server completes one prompt per request, got {len(self.prompt)}; send them as separate requests"
            )
        if not self.text:
            raise ValueError("prompt must not be empty")
        return self

    @property
    def text(self) -> str:
        return self.prompt[0] if isinstance(self.prompt, list) else self.prompt


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def as_template_message(self) -> dict[str, str]:
        """``content`` as one string: text parts joined (a part of another type is refused)."""
        if isinstance(self.content, list):
            if any(part.get("type") != "text" for part in self.content):
                raise ValueError("messages: only text content parts are supported")
            return {"role": self.role, "content": "".join(str(part.get("text", "")) for part in self.content)}
        return {"role": self.role, "content": self.content or ""}


class ChatCompletionRequest(_Sampled):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, description="OpenAI's newer name for max_tokens.")

    @model_validator(mode="after")
    def _newer_name(self) -> ChatCompletionRequest:
        self.max_tokens = self.max_tokens or self.max_completion_tokens
        return self


class LoraLoadRequest(BaseModel):
    """vLLM's ``/v1/load_lora_adapter`` body."""

    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1, description="A registry ref, or a PEFT directory inside --allow-lora-dir.")


class LoraUnloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None
