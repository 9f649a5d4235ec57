"""The bodies of the OpenAI-compatible routes: OpenAI's fields, and vLLM's extras that its clients send
(``ignore_eos``, ``min_tokens``, ``top_k``, ``repetition_penalty``).

A body is parsed here into the one ``SamplingParams`` the engine reads (``_Sampled.sampling``); what needs the
base (a token id inside its vocabulary, a prompt's text) is checked by the routes. Fields OpenAI or vLLM define
that this server does not implement are refused with a 400 naming the field when a request sets them to anything
but their neutral value (``NEUTRAL``: beam search, tools, guided decoding, ...), so a client never silently gets
something other than what it asked for. Fields nobody defines are ignored, as OpenAI-compatible servers do
(clients and SDKs add their own).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from adapterhub.runtime.sampling import SamplingParams
from adapterhub.server.http_errors import HTTPError

NEUTRAL: dict[str, tuple[Any, ...]] = {
    "suffix": (None, ""), "use_beam_search": (None, False), "tools": (None, []), "functions": (None, []),
    "response_format": (None, {"type": "text"}), "stop_token_ids": (None, []), "prompt_logprobs": (None,),
    "include_stop_str_in_output": (None, False), "min_p": (None, 0, 0.0), "length_penalty": (None, 1, 1.0),
    "guided_json": (None,), "guided_regex": (None,), "guided_choice": (None,), "guided_grammar": (None,),
    "structured_outputs": (None,), "return_tokens_as_token_ids": (None, False), "skip_special_tokens": (None, True),
    "echo": (None, False),  # a field of /v1/completions; on chat, vLLM's echo of the last message is not built
}  # fmt: skip
MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
MAX_N = 64
MAX_STOPS = 32  # OpenAI allows 4, vLLM any number: lm-eval sends a task's `until` strings and the EOS text


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampled(BaseModel):
    """What completions and chat completions share."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(
        min_length=1, description="A registry ref (name, name@3, name:tag), a loaded lora_name, or the base's name."
    )
    max_tokens: int | None = Field(default=None, ge=0, description="0 only with echo: the prompt's logprobs alone.")
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=-1, description="vLLM's extra; 0 or -1: no top-k filter.")
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    n: int = Field(default=1, ge=1, le=MAX_N, description="Choices per prompt; they share the prompt's prefill.")
    best_of: int | None = Field(default=None, ge=1, description="Only equal to n: no choice is computed and dropped.")
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    repetition_penalty: float = Field(default=1.0, gt=0, description="vLLM's extra; 1: none.")
    logit_bias: dict[str, float] | None = Field(default=None, description="{token id as a string: -100..100}.")

    @model_validator(mode="after")
    def _stops(self) -> _Sampled:
        if len(self.stops) > MAX_STOPS or any(not s for s in self.stops):
            raise ValueError(f"stop takes up to {MAX_STOPS} non-empty strings")
        return self

    def check(self, vocabulary: int) -> None:
        """Refuse what this server does not do, and what needs the base to check: each a 400 naming its field."""
        for name, value in (self.model_extra or {}).items():
            if name in NEUTRAL and value not in NEUTRAL[name]:
                raise HTTPError(400, f"{name}={value!r} is not supported by this server; leave it out", param=name)
        if self.best_of is not None and self.best_of != self.n:
            raise HTTPError(400, f"best_of={self.best_of} with n={self.n}: this server does not generate choices to "
                                 f"drop them; leave best_of out (or equal to n)", param="best_of")  # fmt: skip
        for token, bias in self.bias:
            if not 0 <= token < vocabulary:
                raise HTTPError(400, f"logit_bias: token id {token} is outside the vocabulary (0..{vocabulary - 1})",
                                param="logit_bias")  # fmt: skip
            if not -100 <= bias <= 100:
                raise HTTPError(400, f"logit_bias: the bias {bias} of token {token} is outside -100..100",
                                param="logit_bias")  # fmt: skip
        if self.max_tokens == 0 and not self.echoed:
            raise HTTPError(400, "max_tokens=0 is only meaningful with echo (the prompt's log-probabilities alone); "
                                 "ask for at least 1 token", param="max_tokens")  # fmt: skip

    @property
    def bias(self) -> tuple[tuple[int, float], ...]:
        """``logit_bias`` as (token id, bias) pairs; a key that is not a number is a 400 naming ``logit_bias``."""
        try:
            return tuple(sorted((int(token), float(bias)) for token, bias in (self.logit_bias or {}).items()))
        except ValueError:
            raise HTTPError(400, f"logit_bias: keys are token ids written as strings (e.g. {{\"42\": -100}}), got "
                                 f"{sorted(self.logit_bias or {})}", param="logit_bias") from None  # fmt: skip

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def echoed(self) -> bool:
        """Whether the prompt comes first in each choice (completions' ``echo``)."""
        return False

    @property
    def top_logprobs_wanted(self) -> int | None:
        """How many alternatives each generated token's log-probability comes with; None: no log-probabilities."""
        return None

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        max_tokens = default_max_tokens if self.max_tokens is None else self.max_tokens
        wanted = self.top_logprobs_wanted
        return SamplingParams(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=max(self.top_k, 0),
            seed=self.seed, stop=self.stops, ignore_eos=self.ignore_eos, min_tokens=min(self.min_tokens, max_tokens),
            logprobs=wanted, prompt_logprobs=(wanted or 0) if self.echoed and (wanted is not None or not max_tokens)
            else None, presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty, logit_bias=self.bias,
        )  # fmt: skip

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def static_refused(self) -> list[str]:
        """The fields set here that ``--batching static`` cannot serve (it answers one plain choice per prompt)."""
        fields = {"n": self.n != 1, "logprobs": self.top_logprobs_wanted is not None, "echo": self.echoed,
                  "presence_penalty": self.presence_penalty != 0, "frequency_penalty": self.frequency_penalty != 0,
                  "repetition_penalty": self.repetition_penalty != 1, "logit_bias": bool(self.logit_bias)}  # fmt: skip
        return [name for name, used in fields.items() if used]


Prompt = StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]


class CompletionRequest(_Sampled):
    prompt: Prompt = Field(description="A string, a list of strings, a list of token ids, or a list of such lists.")
    logprobs: StrictInt | None = Field(default=None, ge=0, le=MAX_LOGPROBS,
                                       description="Each token's log-probability and the k most likely.")  # fmt: skip
    echo: bool = Field(default=False, description="The prompt first in the answer (with its logprobs when asked).")

    @property
    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request: a text, or token ids; an empty one is a 400 naming ``prompt``."""
        p = self.prompt
        found = [p] if isinstance(p, str) or (p and isinstance(p[0], int)) else list(p)
        if not found or any(len(one) == 0 for one in found):
            raise HTTPError(400, "prompt must not be empty (nor hold an empty prompt)", param="prompt")
        return found

    @property
    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs

    @property
    def echoed(self) -> bool:
        return self.echo


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
    logprobs: bool = Field(default=False, description="Each generated token's log-probability.")
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS, description="The k most likely with each.")

    @model_validator(mode="after")
    def _newer_name(self) -> ChatCompletionRequest:
        self.max_tokens = self.max_completion_tokens if self.max_tokens is None else self.max_tokens
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class LoraLoadRequest(BaseModel):
    """vLLM's ``/v1/load_lora_adapter`` body."""

    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1, description="A registry ref, or a PEFT directory inside --allow-lora-dir.")


class LoraUnloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None
