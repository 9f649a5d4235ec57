"""OpenAI's answer objects: a completion or chat completion, whole or as server-sent-event chunks.

``Answer`` knows which of the two a request asked for and builds every object of its answer with the same
``id``, ``created`` and ``model``; the route code only says what text came and how it ended.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

DONE = "data: [DONE]\n\n"


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


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

    def whole(self, text: str, finish: str, used: dict) -> dict:
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
            return self._object("chat.completion", [choice], usage=used)
        return self._object(
            "text_completion", [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}], usage=used
        )

    def chunk(self, text: str, finish: str | None = None, *, first: bool = False, used: dict | None = None) -> str:
        """One streamed piece; a chat stream's first chunk also says the role, as OpenAI's does."""
        extra = {} if used is None else {"usage": used}
        if self.chat:
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return sse(self._object("chat.completion.chunk", [choice], **extra))
        return sse(
            self._object(
                "text_completion", [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}], **extra
            )
        )

    def usage_chunk(self, used: dict) -> str:
        """The extra last chunk of ``stream_options.include_usage``: no choices, the usage."""
        return sse(self._object("chat.completion.chunk" if self.chat else "text_completion", [], usage=used))
