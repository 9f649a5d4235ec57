"""One request of the continuous-batching engine, the events a step gives it, and how a token moves it on.

Shared by the engine's slotted batch (``continuous.py``) and its lane for adapters the slots cannot hold
(``lane.py``): both pick a row's token with its ``RowSampler`` and hand it to ``advance``, which asks the row's
``Finisher`` whether it ended and puts the step's ``Event`` on the list the engine returns.

Everything in an ``EngineRequest`` is read and written on the model thread, except ``cancel`` (a flag) and the
events, which the caller collects from the engine step's return value.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from transformers import DynamicCache, PreTrainedTokenizerBase

from adapterhub.runtime.finisher import Finisher, FinishReason
from adapterhub.runtime.sampling import RowSampler, SamplingParams, TokenLogprob

_ids = itertools.count()


@dataclass
class Event:
    """What a step did for one request: new text (``tokens`` new tokens), and when it ended, why.

    ``logprobs``: one per token this event added, in order, when the request asked (``SamplingParams.logprobs``).
    ``prompt_logprobs``: on the request's first event only, when asked: one per prompt token, the first None (no
    token before it to condition on)."""

    text: str = ""
    tokens: int = 0
    finish: FinishReason | None = None
    error: Exception | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None


@dataclass(eq=False)
class EngineRequest:
    """One request: its prompt tokens, adapter key (``name@version``, None: the base), settings and progress."""

    prompt: list[int]
    adapter: str | None
    params: SamplingParams
    id: int = field(default_factory=lambda: next(_ids))
    arrived: float = field(default_factory=time.perf_counter)
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False
    finished: FinishReason | None = None
    seed_offset: int = 0  # row i of one call's n rows draws from seed + i
    followers: list[EngineRequest] = field(default_factory=list)  # rows that share this one's prefill
    learned_prompt: bool = False  # prompt or prefix tuning: prefilled through peft, then decoded as a base row
    # set on the model thread
    prefilled: int = 0
    cache: DynamicCache | None = None
    sampler: RowSampler | None = None
    finisher: Finisher | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None  # filled during prefill, sent with the first event

    def cancel(self) -> None:
        """The client went away: the next step frees this request's row."""
        self.cancelled = True

    @property
    def slot_key(self) -> str | None:
        """The adapter the slotted batch applies to this row (None: the base alone)."""
        return None if self.learned_prompt else self.adapter

    @property
    def rows(self) -> list[EngineRequest]:
        """This request and the rows that share its prefill."""
        return [self, *self.followers]

    def start(self, tokenizer: PreTrainedTokenizerBase, eos: frozenset[int]) -> None:
        """Build the row's sampler and finisher (on the model thread, when the request is admitted)."""
        self.sampler = RowSampler(self.params, eos, self.prompt, self.seed_offset)
        self.finisher = Finisher(tokenizer, self.params, eos, self.generated)


Events = list[tuple[EngineRequest, Event]]


def advance(s: EngineRequest, token: int, logprob: TokenLogprob | None, events: Events) -> None:
    """Add ``token`` to ``s``: release its text, and end it where its finisher says."""
    text = s.finisher.add(token)
    event = Event(text, 1, s.finisher.reason, logprobs=[] if logprob is None else [logprob])
    event.prompt_logprobs, s.prompt_logprobs = s.prompt_logprobs, None
    if s.finisher.reason is not None:
        s.finished, s.cache = s.finisher.reason, None
    events.append((s, event))


def end(s: EngineRequest, reason: FinishReason, events: Events, error: Exception | None = None) -> None:
    """End ``s`` without a new token: cancelled, failed, or (``max_tokens`` 0) only its prompt scored."""
    s.finished, s.cache = reason, None
    event = Event(finish=reason, error=error, prompt_logprobs=s.prompt_logprobs)
    s.prompt_logprobs = None
    if s.finisher is not None and reason in ("stop", "length"):
        event.text = s.finisher.stream.finish()
    events.append((s, event))
