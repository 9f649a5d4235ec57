"""Where a request's generation ends, and the text it releases on the way: one finisher for every path.

The continuous engine, its lane (adapters the slots cannot hold) and the static batch runs (``inference.generate``)
all hand each new token to a request's ``Finisher``; it ends the request at an end-of-sequence token (unless
``ignore_eos``), at a stop string (the text is cut before it, ``TextStream``) or at ``max_tokens``, and says why
("stop" or "length"). The end-of-sequence tokens come from one set for every path, ``eos_ids``: the generation
config's ids (Llama 3 and chat models list several) and the tokenizer's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adapterhub.runtime.sampling import SamplingParams
from adapterhub.runtime.text_stream import TextStream

FinishReason = Literal["stop", "length", "abort", "error"]


def eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """The tokens that end a generation: the generation config's end-of-sequence ids and the tokenizer's."""
    config = getattr(model, "generation_config", None)
    eos = None if config is None else config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


@dataclass
class Finisher:
    """One request's end: ``add`` each new token, get back the text that became final and, at the end, why."""

    tokenizer: PreTrainedTokenizerBase
    params: SamplingParams
    eos: frozenset[int]
    tokens: list[int] = field(default_factory=list)  # the generated tokens, an end-of-sequence token included
    stream: TextStream = field(init=False)
    reason: FinishReason | None = None

    def __post_init__(self) -> None:
        self.stream = TextStream(self.tokenizer, self.params.stop)

    def add(self, token: int) -> str:
        """Take one more token; return the text that became final. ``reason`` is set when the request ended; then the
        returned text includes what was held back (``TextStream.finish``)."""
        self.tokens.append(token)
        if token in self.eos and not self.params.ignore_eos:
            self.reason = "stop"
            return self.stream.finish()
        text = self.stream.add(token)
        if self.stream.stopped:
            self.reason = "stop"
        elif len(self.tokens) >= self.params.max_tokens:
            self.reason = "length"
        return text + self.stream.finish() if self.reason else text

    @property
    def text(self) -> str:
        """All the text released so far (the whole answer once ``reason`` is set)."""
        return self.stream.released
