"""OpenAI's answer objects: a completion or chat completion, whole or as server-sent-event chunks, with the
log-probabilities shaped as OpenAI and vLLM shape them.

``Answer`` knows which of the two a request asked for and builds every object of its answer with the same
``id``, ``created`` and ``model``; the route code only says, choice by choice, what text came, with which
log-probabilities, and how it ended. ``LogprobWriter`` turns the engine's ``TokenLogprob`` (token ids) into
OpenAI's two shapes: the completions one (``tokens``, ``token_logprobs``, ``top_logprobs`` as ``{token text:
logprob}`` with the chosen token besides the top k, ``text_offset``) and the chat one (``content``: one object per
token with its ``bytes`` and a ``top_logprobs`` list). vLLM's rules are kept where clients read them: the first
prompt token of an echo has no log-probability (``null``), and ``-inf`` is written as -9999.0 (JSON has no
infinity).
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from adapterhub.runtime.sampling import TokenLogprob

DONE = "data: [DONE]\n\n"
LOWEST_LOGPROB = -9999.0  # vLLM's stand-in for -inf


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _finite(logprob: float) -> float:
    return max(logprob, LOWEST_LOGPROB)


Scored = tuple[int, TokenLogprob | None]
"""A token id and its log-probability (None for the first token of a prompt: nothing comes before it)."""


@dataclass
class LogprobWriter:
    """OpenAI's log-probability objects from token ids, each token's text decoded once."""

    tokenizer: PreTrainedTokenizerBase
    top: int  # how many alternatives the request asked for (completions' logprobs, chat's top_logprobs)

    def __post_init__(self) -> None:
        self.text_of = functools.lru_cache(maxsize=4096)(self._decode)

    def _decode(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def completion(self, scored: list[Scored], offset: int) -> tuple[dict, int]:
        """The completions ``logprobs`` of ``scored`` whose text starts at character ``offset`` of the choice's
        text, and the offset after them (vLLM counts each token's decoded length)."""
        tokens, chosen, tops, offsets = [], [], [], []
        for token, scores in scored:
            text = self.text_of(token)
            tokens.append(text)
            offsets.append(offset)
            offset += len(text)
            if scores is None:
                chosen.append(None)
                tops.append(None)
                continue
            chosen.append(_finite(scores.logprob))
            best = {text: _finite(scores.logprob)}  # the chosen token is always there, as OpenAI documents
            best.update((self.text_of(t), _finite(lp)) for t, lp in scores.top[: self.top])
            tops.append(best)
        return {"tokens": tokens, "token_logprobs": chosen, "top_logprobs": tops, "text_offset": offsets}, offset

    def chat(self, scored: list[TokenLogprob]) -> dict:
        """The chat ``logprobs``: ``{"content": [...]}``, one object per generated token."""
        return {
            "content": [
                {
                    **self._chat_entry(s.token, s.logprob),
                    "top_logprobs": [self._chat_entry(t, lp) for t, lp in s.top[: self.top]],
                }
                for s in scored
            ]
        }

    def _chat_entry(self, token: int, logprob: float) -> dict:
        text = self.text_of(token)
        return {"token": text, "logprob": _finite(logprob), "bytes": list(text.encode("utf-8", errors="replace"))}


@dataclass
class Answer:
    chat: bool
    model: str
    id: str = field(default="")
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = self.id or f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"

    def _object(self, kind: str, choices: list[dict], **extra) -> dict:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def choice(self, index: int, text: str, finish: str | None, logprobs: dict | None = None) -> dict:
        """One whole choice."""
        if self.chat:
            message = {"role": "assistant", "content": text}
            return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def whole(self, choices: list[dict], used: dict) -> dict:
        """The whole answer: ``choices`` made by ``choice``, in index order."""
        return self._object("chat.completion" if self.chat else "text_completion", choices, usage=used)

    def chunk(self, index: int, text: str, finish: str | None = None, *, first: bool = False,
              logprobs: dict | None = None, used: dict | None = None) -> str:  # fmt: skip
        """One streamed piece of choice ``index``; a chat choice's first chunk also says the role, as OpenAI's
        does."""
        extra = {} if used is None else {"usage": used}
        if self.chat:
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return sse(self._object("chat.completion.chunk", [choice], **extra))
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return sse(self._object("text_completion", [choice], **extra))

    def usage_chunk(self, used: dict) -> str:
        """The extra last chunk of ``stream_options.include_usage``: no choices, the usage."""
        return sse(self._object("chat.completion.chunk" if self.chat else "text_completion", [], usage=used))
