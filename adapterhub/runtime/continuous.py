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

Adapters that are not slottable need peft's own model around the forward (lane.py). A prompt- or prefix-tuning
request is prefilled through peft (its virtual tokens go into its cache) and then decodes in the slotted batch as
a row without an adapter; requests for any other such adapter go to the engine's ``Lane``, one small batch of
its own that takes one step per engine step beside the slotted decode.

Requests submitted together (``submit_many``: one API call's ``n`` rows) with the same prompt and adapter are
prefilled once: the first is the leader, the others follow it, and at the end of the prefill each row picks its
own first token from the same logits and joins with its own copy of the cache.

Prompts for one adapter that start alike (a system prompt) share their KV entries across requests
(``prefix_cache.py``): at admission a request's cache starts with the longest cached prefix of its prompt for its
adapter key and its prefill starts after it; at the end of its prefill its prompt's whole blocks are kept. Requests
with ``prompt_logprobs`` (the prefix's logits are not kept) and prompt or prefix tuning (their cache starts with
virtual columns) neither reuse nor keep; the lane does not take part.
"""

from __future__ import annotations

import collections
import inspect
import logging

import torch
from transformers import DynamicCache

from adapterhub.runtime.engine_request import EngineRequest, Event, Events, advance, end
from adapterhub.runtime.finisher import FinishReason, eos_ids
from adapterhub.runtime.kv_rows import RowCache
from adapterhub.runtime.lane import Lane, learns_prompt, prefill_virtual
from adapterhub.runtime.pool import AdapterPool
from adapterhub.runtime.prefix_cache import PrefixCache
from adapterhub.runtime.sampling import token_logprobs

__all__ = ["ContinuousEngine", "EngineRequest", "Event", "FinishReason"]
log = logging.getLogger(__name__)


class ContinuousEngine:
    def __init__(self, pool: AdapterPool, *, max_running: int = 16, prefill_chunk: int = 128,
                 lane_rows: int | None = None, prefix_cache_mb: float = 256) -> None:  # fmt: skip
        if pool.base.model_task != "causal-lm":
            raise ValueError(f"continuous batching generates text; this base is a {pool.base.model_task} model")
        self.pool, self.max_running, self.prefill_chunk = pool, max_running, prefill_chunk
        self.model = pool.base.model
        self.tokenizer = pool.base.tokenizer
        self.eos = eos_ids(self.model, self.tokenizer)
        self.incoming: collections.deque[EngineRequest] = collections.deque()  # appended by other threads
        self.waiting: collections.deque[EngineRequest] = collections.deque()
        self.prefilling: list[EngineRequest] = []
        self.running: list[EngineRequest] = []
        self.cache = RowCache()
        self.prefixes = PrefixCache(int(prefix_cache_mb * 2**20)) if prefix_cache_mb > 0 else None
        self.decoded_rows = 0  # rows of the last step's decode forward (0: it had none)
        accepted = inspect.signature(self.model.forward).parameters
        self._last_logits = "logits_to_keep" in accepted
        self._cache_kw = "cache" if "cache" in accepted else "past_key_values"  # renamed in transformers 5.2x
        self.lane = Lane(pool, max_rows=lane_rows or max_running, cache_keyword=self._cache_kw,
                         last_logits=self._last_logits)  # fmt: skip

    # -- called from any thread -----------------------------------------------------------------------
    def submit(self, request: EngineRequest) -> None:
        self.incoming.append(request)

    def submit_many(self, requests: list[EngineRequest]) -> None:
        """Submit ``requests`` together (one API call's ``n`` rows or prompts): those with the same prompt, adapter
        and ``prompt_logprobs`` are prefilled once, the later ones following the first; a seeded request's ``i``-th
        copy draws from ``seed + i``."""
        leaders: dict[tuple, EngineRequest] = {}
        for request in requests:
            same = (tuple(request.prompt), request.adapter, request.params.prompt_logprobs)
            leader = leaders.setdefault(same, request)
            if leader is not request:
                request.seed_offset = len(leader.rows)
                leader.followers.append(request)
        self.incoming.extend(leaders.values())

    @property
    def queued(self) -> int:
        return len(self.incoming) + len(self.waiting) + len(self.lane.waiting)

    @property
    def active(self) -> int:
        return sum(len(s.rows) for s in self.prefilling) + len(self.running) + len(self.lane)

    def has_work(self) -> bool:
        return bool(
            self.incoming or self.waiting or self.prefilling or self.running or self.lane.waiting or self.lane.rows
        )

    # -- the model thread ------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> Events:
        events: Events = []
        while self.incoming:
            self.waiting.append(self.incoming.popleft())
        self._drop_cancelled(events)
        self._admit(events)
        self._prefill(events)
        self._decode(events)
        self.lane.step(events)
        return events

    def _drop_cancelled(self, events: Events) -> None:
        for queue in (self.waiting, self.prefilling):
            for s in [s for s in queue if all(r.cancelled for r in s.rows)]:
                queue.remove(s)
                for r in s.rows:
                    end(r, "abort", events)
        if any(s.cancelled for s in self.running):
            for s in self.running:
                if s.cancelled:
                    end(s, "abort", events)
            self._keep_unfinished()
        self.lane.drop_cancelled(events)

    def _admit(self, events: Events) -> None:
        blocked = False
        in_use = {r.slot_key for r in self.prefilling + self.running if r.slot_key is not None}
        for s in list(self.waiting):
            try:
                adapter = None if s.adapter is None else self.pool.fetch(s.adapter)
            except Exception as exc:  # unreadable, damaged or for another base: this request fails alone
                self.waiting.remove(s)
                for r in s.rows:
                    end(r, "error", events, exc)
                continue
            for r in s.rows:
                r.learned_prompt = adapter is not None and adapter.kind == "peft" and learns_prompt(adapter)
            if adapter is not None and adapter.kind == "peft" and not s.learned_prompt:  # the lane, whatever room
                self.waiting.remove(s)
                for r in s.rows:
                    r.start(self.tokenizer, self.eos)
                    self.lane.waiting.append(r)
                continue
            slotted_rows = sum(len(r.rows) for r in self.prefilling) + len(self.running)  # the lane has its own
            if slotted_rows and slotted_rows + len(s.rows) > self.max_running:
                continue  # a later request with fewer rows may still fit
            takes_slot = s.slot_key is not None and s.slot_key not in in_use
            if takes_slot and (blocked or len(in_use) >= self.pool.slots):
                blocked = True  # later requests may join only with adapters already running
                continue
            self.waiting.remove(s)
            if s.slot_key is not None:
                in_use.add(s.slot_key)
            for r in s.rows:
                r.start(self.tokenizer, self.eos)
            s.cache = DynamicCache()
            if self._reuses_prefix(s):
                s.prefilled, cached = self.prefixes.lookup(s.adapter, s.prompt)
                s.cache = cached or s.cache
            self.prefilling.append(s)

    def _reuses_prefix(self, s: EngineRequest) -> bool:
        """Whether ``s`` takes part in prefix reuse: not with ``prompt_logprobs`` (the cached prefix has no logits to
        score), nor prompt or prefix tuning (their cache starts with virtual columns, prefilled through peft)."""
        return self.prefixes is not None and s.params.prompt_logprobs is None and not s.learned_prompt

    def _prefill(self, events: Events) -> None:
        budget = self.prefill_chunk
        for s in list(self.prefilling):
            if budget <= 0:
                return
            if s.learned_prompt:
                budget -= len(s.prompt)
                self._prefill_virtual(s, events)
                continue
            chunk = s.prompt[s.prefilled : s.prefilled + budget]
            start, s.prefilled = s.prefilled, s.prefilled + len(chunk)
            budget -= len(chunk)
            positions = torch.arange(start, s.prefilled, device=self.pool.device)
            whole = s.params.prompt_logprobs is not None  # every position's logits, not only the last
            extra = {"logits_to_keep": 1} if self._last_logits and not whole else {}
            try:
                with self.pool.activate([s.adapter]):
                    out = self.model(input_ids=torch.tensor([chunk], device=self.pool.device), position_ids=positions[None],
                                     cache_position=positions, use_cache=True, **{self._cache_kw: s.cache}, **extra)  # fmt: skip
            except Exception as exc:
                self.prefilling.remove(s)
                for r in s.rows:
                    end(r, "error", events, exc)
                continue
            if whole:
                self._score_prompt(s, out.logits[0], start)
            if s.prefilled < len(s.prompt):
                continue
            self.prefilling.remove(s)
            if self._reuses_prefix(s):
                self.prefixes.insert(s.adapter, s.prompt, s.cache)
            self._first_tokens(s, out.logits[0, -1], events)

    def _prefill_virtual(self, s: EngineRequest, events: Events) -> None:
        """A prompt- or prefix-tuning request's whole prompt in one forward through peft (lane.py)."""
        self.prefilling.remove(s)
        whole = s.params.prompt_logprobs is not None
        try:
            logits, s.cache, virtual = prefill_virtual(self.pool, s.adapter, s.prompt, cache_keyword=self._cache_kw,
                                                       last_only=self._last_logits and not whole)  # fmt: skip
        except Exception as exc:
            for r in s.rows:
                end(r, "error", events, exc)
            return
        s.prefilled = len(s.prompt)
        if whole:
            s.prompt_logprobs = [None, *token_logprobs(logits[:-1], s.prompt[1:], s.params.prompt_logprobs)]
        self._first_tokens(s, logits[-1], events, columns=virtual + len(s.prompt))

    def _score_prompt(self, s: EngineRequest, logits: torch.Tensor, start: int) -> None:
        """The log-probabilities of the prompt tokens this chunk's ``logits`` (chunk, vocabulary) predict."""
        following = s.prompt[start + 1 : s.prefilled + 1]  # the last chunk's last position predicts no prompt token
        scored = token_logprobs(logits[: len(following)], following, s.params.prompt_logprobs)
        s.prompt_logprobs = (s.prompt_logprobs or [None]) + scored

    def _first_tokens(self, s: EngineRequest, logits: torch.Tensor, events: Events, columns: int | None = None) -> None:
        """The end of ``s``'s prefill: each of its rows picks its first token and joins the running batch with its
        own copy of the cache, ``columns`` long (default: the prompt's), or ends: cancelled meanwhile,
        ``max_tokens`` 0, or done at its first token."""
        joining, cache = [], s.cache
        for r in s.rows:
            r.prompt_logprobs = s.prompt_logprobs
            if r.cancelled:
                end(r, "abort", events)
            elif r.params.max_tokens == 0:
                end(r, "length", events)
            else:
                advance(r, *r.sampler.pick(logits, r.generated), events)
                if r.finished is None:
                    joining.append(r)
        if joining:
            if len(joining) > 1:
                cache.batch_repeat_interleave(len(joining))
            self.cache.join(cache, columns or len(s.prompt), rows=len(joining))
            self.running += joining
        s.cache, s.followers = None, []

    def _decode(self, events: Events) -> None:
        self.decoded_rows = len(self.running)
        if not self.running:
            return
        tokens = torch.tensor([[s.generated[-1]] for s in self.running], device=self.pool.device)
        try:
            with self.pool.activate([s.slot_key for s in self.running]):
                out = self.model(input_ids=tokens, use_cache=True, **self.cache.step_inputs(self._cache_kw))
                logits = out.logits[:, -1]
        except Exception as exc:  # the batch's forward failed: its rows end with the error, the engine goes on
            log.exception("a decode step of %d rows failed", len(self.running))
            for s in self.running:
                end(s, "error", events, exc)
            self.running, self.cache = [], RowCache()
            return
        self.cache.stepped()
        best = logits.argmax(-1).tolist()  # every plain greedy row's token in one call
        for i, s in enumerate(self.running):
            plain = s.params.plain and s.params.logprobs is None and len(s.generated) >= s.params.min_tokens
            advance(s, *((best[i], None) if plain else s.sampler.pick(logits[i], s.generated)), events)
        self._keep_unfinished()

    def _keep_unfinished(self) -> None:
        keep = [i for i, s in enumerate(self.running) if s.finished is None]
        if len(keep) < len(self.running):
            self.running = [self.running[i] for i in keep]
            self.cache.keep(keep)
