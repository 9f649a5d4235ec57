"""Continuous batching: requests join and leave the running batch at every decode step, each with its own adapter.

``ContinuousEngine.step()`` is one iteration of the scheduler, run on the model thread:

1. drop requests whose client went away (``EngineRequest.cancel``), wherever they are;
2. admit waiting requests, first come first served, while the batch has room (``max_running`` rows) and the
   pool has slots for their adapters (at most ``pool.slots`` distinct adapters in a forward); a request that
   does not fit stops later requests that would take another slot from passing it, so it cannot starve;
3. prefill newcomers, at most ``prefill_chunk`` prompt tokens in all: a long prompt is prefilled over several
   steps, so running rows wait for at most one chunk between two of their tokens; a newcomer whose prefill
   ends picks its first token and joins the running batch (its KV columns are padded in, ``RowCache.join``);
4. one decode step of the running batch: one forward with each row's adapter (``pool.activate``, a slot
   index per row) over the shared ``RowCache``, one token per row; rows that finished leave.

What transformers gives is used as is: the model's forward with a ``DynamicCache``, its logits warpers. Its
``generate`` cannot admit a request into a running batch, and its continuous-batching manager packs requests
into one ragged sequence over paged attention, where our slots select an adapter per batch row; so the
scheduling, and the row bookkeeping of the cache, are written here.

Adapters that are not slottable (prompt and prefix tuning, adapters with trained biases, ...) need peft's own
model around the forward; such a request runs whole through ``generate`` (``inference.generate``) in one step,
holding the running rows for its length: the price of a method the slots cannot express, said in the README.

Everything in an ``EngineRequest`` is read and written on the model thread, except ``cancel`` (a flag) and the
events, which the caller collects from ``step``'s return value.
"""

from __future__ import annotations

import collections
import inspect
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import DynamicCache

from adapterhub.runtime.inference import GenerationSettings, generate
from adapterhub.runtime.kv_rows import RowCache
from adapterhub.runtime.pool import AdapterPool
from adapterhub.runtime.sampling import RowSampler, SamplingParams, TokenLogprob
from adapterhub.runtime.text_stream import TextStream

log = logging.getLogger(__name__)
FinishReason = Literal["stop", "length", "abort", "error"]
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
    # set on the model thread
    prefilled: int = 0
    cache: DynamicCache | None = None
    sampler: RowSampler | None = None
    text: TextStream | None = None

    def cancel(self) -> None:
        """The client went away: the next step frees this request's row."""
        self.cancelled = True


class ContinuousEngine:
    def __init__(self, pool: AdapterPool, *, max_running: int = 16, prefill_chunk: int = 128) -> None:
        if pool.base.model_task != "causal-lm":
            raise ValueError(f"continuous batching generates text; this base is a {pool.base.model_task} model")
        self.pool, self.max_running, self.prefill_chunk = pool, max_running, prefill_chunk
        self.model = pool.base.model
        self.tokenizer = pool.base.tokenizer
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos]) | (
            {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        )
        self.incoming: collections.deque[EngineRequest] = collections.deque()  # appended by other threads
        self.waiting: collections.deque[EngineRequest] = collections.deque()
        self.prefilling: list[EngineRequest] = []
        self.running: list[EngineRequest] = []
        self.cache = RowCache()
        self.decoded_rows = 0  # rows of the last step's decode forward (0: it had none)
        accepted = inspect.signature(self.model.forward).parameters
        self._last_logits = "logits_to_keep" in accepted
        self._cache_kw = "cache" if "cache" in accepted else "past_key_values"  # renamed in transformers 5.2x

    # -- called from any thread -----------------------------------------------------------------------
    def submit(self, request: EngineRequest) -> None:
        self.incoming.append(request)

    def submit_many(self, requests: list[EngineRequest]) -> None:
        """Submit ``requests`` together (``n`` > 1, or several prompts of one API call): those with the same prompt
        and adapter are prefilled once and the cache copied into each row."""
        self.incoming.extend(requests)

    @property
    def queued(self) -> int:
        return len(self.incoming) + len(self.waiting)

    @property
    def active(self) -> int:
        return len(self.prefilling) + len(self.running)

    def has_work(self) -> bool:
        return bool(self.incoming or self.waiting or self.prefilling or self.running)

    # -- the model thread ------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[tuple[EngineRequest, Event]]:
        events: list[tuple[EngineRequest, Event]] = []
        while self.incoming:
            self.waiting.append(self.incoming.popleft())
        self._drop_cancelled(events)
        self._admit(events)
        self._prefill(events)
        self._decode(events)
        return events

    def _drop_cancelled(self, events: list) -> None:
        for queue in (self.waiting, self.prefilling):
            for s in [s for s in queue if s.cancelled]:
                queue.remove(s)
                self._end(s, "abort", events)
        if any(s.cancelled for s in self.running):
            for s in self.running:
                if s.cancelled:
                    self._end(s, "abort", events)
            self._keep_unfinished()

    def _admit(self, events: list) -> None:
        blocked = False
        in_use = {r.adapter for r in self.prefilling + self.running if r.adapter is not None}
        for s in list(self.waiting):
            if self.active >= self.max_running:
                return
            try:
                slotted = s.adapter is None or self.pool.fetch(s.adapter).kind == "slotted"
            except Exception as exc:  # unreadable, damaged or for another base: this request fails alone
                self.waiting.remove(s)
                self._end(s, "error", events, exc)
                continue
            if not slotted:
                self.waiting.remove(s)
                self._whole(s, events)
                continue
            takes_slot = s.adapter is not None and s.adapter not in in_use
            if takes_slot and (blocked or len(in_use) >= self.pool.slots):
                blocked = True  # later requests may join only with adapters already running
                continue
            self.waiting.remove(s)
            if s.adapter is not None:
                in_use.add(s.adapter)
            s.sampler, s.text = RowSampler(s.params, frozenset(self.eos)), TextStream(self.tokenizer, s.params.stop)
            s.cache = DynamicCache()
            self.prefilling.append(s)

    def _prefill(self, events: list) -> None:
        budget = self.prefill_chunk
        for s in list(self.prefilling):
            if budget <= 0:
                return
            chunk = s.prompt[s.prefilled : s.prefilled + budget]
            start, s.prefilled = s.prefilled, s.prefilled + len(chunk)
            budget -= len(chunk)
            positions = torch.arange(start, s.prefilled, device=self.pool.device)
            extra = {"logits_to_keep": 1} if self._last_logits else {}
            try:
                with self.pool.activate([s.adapter]):
                    out = self.model(input_ids=torch.tensor([chunk], device=self.pool.device), position_ids=positions[None],
                                     cache_position=positions, use_cache=True, **{self._cache_kw: s.cache}, **extra)  # fmt: skip
            except Exception as exc:
                self.prefilling.remove(s)
                self._end(s, "error", events, exc)
                continue
            if s.prefilled < len(s.prompt):
                continue
            self.prefilling.remove(s)
            self._advance(s, s.sampler.pick(out.logits[0, -1], s.generated)[0], events)
            if s.finished is None:
                self.cache.join(s.cache, len(s.prompt))
                s.cache = None
                self.running.append(s)

    def _decode(self, events: list) -> None:
        self.decoded_rows = len(self.running)
        if not self.running:
            return
        tokens = torch.tensor([[s.generated[-1]] for s in self.running], device=self.pool.device)
        try:
            with self.pool.activate([s.adapter for s in self.running]):
                out = self.model(input_ids=tokens, use_cache=True, **self.cache.step_inputs(self._cache_kw))
                logits = out.logits[:, -1]
        except Exception as exc:  # the batch's forward failed: its rows end with the error, the engine goes on
            log.exception("a decode step of %d rows failed", len(self.running))
            for s in self.running:
                self._end(s, "error", events, exc)
            self.running, self.cache = [], RowCache()
            return
        self.cache.stepped()
        best = logits.argmax(-1).tolist()  # every greedy row's token in one call
        for i, s in enumerate(self.running):
            plain = s.params.greedy and len(s.generated) >= s.params.min_tokens
            self._advance(s, best[i] if plain else s.sampler.pick(logits[i], s.generated)[0], events)
        self._keep_unfinished()

    def _keep_unfinished(self) -> None:
        keep = [i for i, s in enumerate(self.running) if s.finished is None]
        if len(keep) < len(self.running):
            self.running = [self.running[i] for i in keep]
            self.cache.keep(keep)

    def _advance(self, s: EngineRequest, token: int, events: list) -> None:
        """Add ``token`` to ``s``: release its text, and end it at a stop (EOS, stop string) or its length."""
        s.generated.append(token)
        eos = token in self.eos and not s.params.ignore_eos
        text = "" if eos else s.text.add(token)
        if eos or s.text.stopped:
            self._end(s, "stop", events, text=text, tokens=1)
        elif len(s.generated) >= s.params.max_tokens:
            self._end(s, "length", events, text=text, tokens=1)
        else:
            events.append((s, Event(text, 1)))

    def _end(self, s: EngineRequest, reason: FinishReason, events: list, error: Exception | None = None, *,
             text: str = "", tokens: int = 0) -> None:  # fmt: skip
        s.finished, s.cache = reason, None
        if s.text is not None and reason in ("stop", "length"):
            text += s.text.finish()
        events.append((s, Event(text, tokens, reason, error)))

    def _whole(self, s: EngineRequest, events: list) -> None:
        """Run a request for a non-slottable adapter whole through peft's ``generate`` (see the module docstring)."""
        p = s.params
        settings = GenerationSettings(
            max_new_tokens=p.max_tokens, do_sample=not p.greedy, temperature=p.temperature or 1.0, top_p=p.top_p,
            top_k=p.top_k, seed=p.seed, min_new_tokens=p.max_tokens if p.ignore_eos else p.min_tokens,
        )  # fmt: skip
        try:
            [result] = generate(self.pool, [s.prompt], [s.adapter], settings)
        except Exception as exc:
            self._end(s, "error", events, exc)
            return
        cut = min((at for at in (result.text.find(x) for x in p.stop) if at != -1), default=-1)
        text = result.text if cut == -1 else result.text[:cut]
        s.generated = [0] * result.tokens  # counted, not kept: the text is what the caller gets
        stopped = cut != -1 or result.tokens < p.max_tokens
        self._end(s, "stop" if stopped else "length", events, text=text, tokens=result.tokens)
