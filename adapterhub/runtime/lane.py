"""The lane: requests for adapters the slots cannot hold, decoded step by step beside the slotted batch.

Prompt tuning, prefix tuning, adapters with trained biases, bottleneck adapters, ... need peft's own model around the
forward (``AdapterPool.peft_adapter``), and peft attaches one such adapter at a time. So the lane serves one of them
at a time: the waiting requests for the adapter first in line start together as one small left-padded batch with
its own KV cache, and each engine step runs one forward of it next to the slotted batch's decode, so a long
prompt-tuning request no longer holds every other row. Requests for another such adapter wait until the batch ends.

The forward is driven as peft's ``generate`` means it, step by step: prompt tuning prepends the virtual tokens'
embeddings on the first forward only, prefix tuning starts the cache with its prefix (``get_prompt``), and the
attention mask and positions count the virtual tokens; other peft adapters run peft's forward as it is. peft's
own ``generate`` is not called: it cannot take a row in or out between steps, and (peft 0.21 with transformers
5.2x) it looks for the cache under ``past_key_values`` where transformers now names it ``cache``, so it injects the
prompt again at every step; the tests compare the lane with peft's forward over the whole text instead.
"""

from __future__ import annotations

import collections
import logging

import torch
from peft.utils import PeftType
from transformers import DynamicCache

from adapterhub.errors import AdapterHubError
from adapterhub.runtime.engine_request import EngineRequest, Events, advance, end
from adapterhub.runtime.pool import AdapterPool
from adapterhub.runtime.sampling import token_logprobs

log = logging.getLogger(__name__)
EMBEDDED = (PeftType.PROMPT_TUNING, PeftType.P_TUNING)  # virtual tokens as input embeddings


class Lane:
    """The engine's batch of non-slottable requests (see the module docstring)."""

    def __init__(self, pool: AdapterPool, *, max_rows: int, cache_keyword: str, last_logits: bool) -> None:
        self.pool, self.max_rows, self.cache_keyword, self.last_logits = pool, max_rows, cache_keyword, last_logits
        self.waiting: collections.deque[EngineRequest] = collections.deque()
        self.rows: list[EngineRequest] = []
        self.key: str | None = None
        self._inputs: dict = {}  # the next forward's inputs
        self._mask = self._positions = torch.empty(0)
        self._cache: DynamicCache | None = None
        self._embedded = self._prefix = False
        self._width = 0  # prompt columns of the first forward

    def __len__(self) -> int:
        return len(self.rows)

    def drop_cancelled(self, events: Events) -> None:
        for s in [s for s in self.waiting if s.cancelled]:
            self.waiting.remove(s)
            end(s, "abort", events)
        for s in self.rows:
            if s.cancelled and s.finished is None:
                end(s, "abort", events)
        self._keep_unfinished()

    def step(self, events: Events) -> None:
        """One forward of the lane's batch (its prefill, when it has just started), one token per row."""
        if not self.rows and self.waiting:
            self._start()
        if not self.rows:
            return
        first = self._cache is None
        try:
            with self.pool.peft_adapter(self.key) as model:
                if first:
                    self._first_inputs(model)
                runner = model.base_model if self._embedded or self._prefix else model
                out = runner(**self._inputs, attention_mask=self._mask, use_cache=True,
                             **{self.cache_keyword: self._cache})  # fmt: skip
        except Exception as exc:  # the lane's forward failed: its rows end with the error, the engine goes on
            log.exception("a lane step of %d rows for %s failed", len(self.rows), self.key)
            for s in self.rows:
                end(s, "error", events, exc)
            self.rows = []
            return
        if first:
            self._score_prompts(out.logits, events)
        logits = out.logits[:, -1]
        tokens = []
        for i, s in enumerate(self.rows):
            token, logprob = s.sampler.pick(logits[i], s.generated) if s.finished is None else (0, None)
            tokens.append(token)
            if s.finished is None:
                advance(s, token, logprob, events)
        self._inputs = {"input_ids": torch.tensor(tokens, device=self.pool.device)[:, None],
                        "position_ids": self._positions[:, -1:] + 1}  # fmt: skip
        self._positions = self._inputs["position_ids"]
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(self.rows), 1)], 1)
        self._keep_unfinished()

    def _start(self) -> None:
        """Take the requests for the adapter first in line (up to ``max_rows``) as the lane's new batch."""
        self.key = self.waiting[0].adapter
        self.rows = [s for s in self.waiting if s.adapter == self.key][: self.max_rows]
        for s in self.rows:
            self.waiting.remove(s)
        self._cache, self._inputs = None, {}

    def _first_inputs(self, model) -> None:
        """The first forward's inputs: the prompts left-padded, the virtual tokens in front as the method wants."""
        config = model.active_peft_config
        self._embedded, self._prefix = config.peft_type in EMBEDDED, config.peft_type == PeftType.PREFIX_TUNING
        if config.is_prompt_learning and not (self._embedded or self._prefix):
            raise AdapterHubError(f"adapter {self.key} is {config.peft_type.value}, which the engine cannot serve step by "
                                  "step; serve it with --batching static")  # fmt: skip
        device, virtual = self.pool.device, config.num_virtual_tokens if config.is_prompt_learning else 0
        self._width = width = max(len(s.prompt) for s in self.rows)
        ids = torch.tensor([[0] * (width - len(s.prompt)) + s.prompt for s in self.rows], device=device)
        mask = torch.tensor([[0] * (width - len(s.prompt)) + [1] * len(s.prompt) for s in self.rows], device=device)
        self._mask = torch.cat([mask.new_ones(len(self.rows), virtual), mask], 1)
        positions = (self._mask.cumsum(-1) - 1).masked_fill(self._mask == 0, 1)
        if self._embedded:
            prompts = model.get_prompt(batch_size=len(self.rows))
            embeds = model.word_embeddings(ids)
            self._inputs = {
                "inputs_embeds": torch.cat([prompts.to(embeds.dtype), embeds], 1),
                "position_ids": positions,
            }
            self._cache = DynamicCache()
        else:
            self._inputs = {"input_ids": ids, "position_ids": positions[:, virtual:]}
            self._cache = model.get_prompt(len(self.rows), max_cache_len=-1) if self._prefix else DynamicCache()
        self._positions = positions
        if self.last_logits and all(s.params.prompt_logprobs is None for s in self.rows):
            self._inputs["logits_to_keep"] = 1

    def _score_prompts(self, logits: torch.Tensor, events: Events) -> None:
        """Each asking row's prompt log-probabilities from the first forward's logits; rows with ``max_tokens`` 0
        end here."""
        for i, s in enumerate(self.rows):
            if s.params.prompt_logprobs is not None:
                own = logits[i, logits.shape[1] - len(s.prompt) : -1]  # (prompt - 1, vocabulary)
                s.prompt_logprobs = [None, *token_logprobs(own, s.prompt[1:], s.params.prompt_logprobs)]
            if s.params.max_tokens == 0:
                end(s, "length", events)

    def _keep_unfinished(self) -> None:
        keep = [i for i, s in enumerate(self.rows) if s.finished is None]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep or self._cache is None:
            self._cache = None if not keep else self._cache
            return
        index = torch.tensor(keep, device=self.pool.device)
        self._cache.batch_select_indices(index)
        self._mask, self._positions = self._mask[index], self._positions[index]
        self._inputs = {k: v[index] if isinstance(v, torch.Tensor) else v for k, v in self._inputs.items()}
