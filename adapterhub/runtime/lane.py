"""Adapters the slots cannot hold, beside the slotted batch: prompt learning prefilled through peft, the lane.

Prompt tuning, prefix tuning, adapters with trained biases, bottleneck adapters, ... need peft's own model around
the forward (``AdapterPool.peft_adapter``), and peft attaches one such adapter at a time. Two cases:

* **Prompt and prefix tuning** change only what the model sees before the prompt: prompt tuning prepends its
  virtual tokens' embeddings on the first forward, prefix tuning starts the KV cache with its prefix. After that
  first forward a decode step is the base model's own, over a cache that holds the virtual tokens. So
  ``prefill_virtual`` runs that first forward through peft, and the engine puts the row into its slotted batch as
  a row without an adapter, its cache ``virtual + prompt`` columns long (positions count the virtual tokens, as
  peft's ``generate`` counts them).
* **Every other peft adapter** changes every forward. Its requests run in the ``Lane``: one adapter at a time, the
  requests for the adapter first in line start together as one small left-padded batch with its own KV cache, and
  each engine step runs one forward of it beside the slotted batch's decode, so a long request there no longer
  holds every other row. Requests for another such adapter wait until the batch ends.

peft's own ``generate`` is not called: it cannot take a row in or out between steps, and (peft 0.21 with
transformers 5.2x) it hands its cache over as ``past_key_values`` where transformers now takes ``cache``, so for
prompt tuning it injects the prompt again at every step; the tests compare with peft's forward over the whole
text instead.
"""

from __future__ import annotations

import collections
import logging

import torch
from transformers import DynamicCache

from adapterhub.runtime.engine_request import EngineRequest, Events, advance, end
from adapterhub.runtime.pool import AdapterPool, HostAdapter
from adapterhub.runtime.sampling import token_logprobs

log = logging.getLogger(__name__)
EMBEDDED = ("PROMPT_TUNING", "P_TUNING")  # virtual tokens as input embeddings
PREFIXED = ("PREFIX_TUNING",)  # virtual tokens as a KV cache prefix


def learns_prompt(adapter: HostAdapter) -> bool:
    """Whether ``adapter`` only adds virtual tokens before the prompt (its rows decode as base rows)."""
    return str(adapter.peft_config.get("peft_type")) in EMBEDDED + PREFIXED


def prefill_virtual(pool: AdapterPool, key: str, prompt: list[int], *, cache_keyword: str,
                    last_only: bool) -> tuple[torch.Tensor, DynamicCache, int]:  # fmt: skip
    """The first forward of a prompt- or prefix-tuning request through peft: the prompt's logits ``(prompt,
    vocabulary)`` (only the last position's with ``last_only``), its cache, and how many virtual columns lead it."""
    with pool.peft_adapter(key) as model:
        virtual = model.active_peft_config.num_virtual_tokens
        ids = torch.tensor([prompt], device=pool.device)
        positions = torch.arange(virtual + len(prompt), device=pool.device)[None]
        if str(model.active_peft_config.peft_type.value) in EMBEDDED:
            embeds = model.word_embeddings(ids)
            inputs = {"inputs_embeds": torch.cat([model.get_prompt(batch_size=1).to(embeds.dtype), embeds], 1),
                      "position_ids": positions}  # fmt: skip
            cache = DynamicCache()
        else:
            inputs, cache = (
                {"input_ids": ids, "position_ids": positions[:, virtual:]},
                model.get_prompt(1, max_cache_len=-1),
            )
        if last_only:
            inputs["logits_to_keep"] = 1
        out = model.base_model(
            **inputs, attention_mask=torch.ones_like(positions), use_cache=True, **{cache_keyword: cache}
        )
    return out.logits[0, -len(prompt) :], cache, virtual


class Lane:
    """The engine's batch of requests for a non-slottable adapter other than prompt learning (see the module
    docstring)."""

    def __init__(self, pool: AdapterPool, *, max_rows: int, cache_keyword: str, last_logits: bool) -> None:
        self.pool, self.max_rows, self.cache_keyword, self.last_logits = pool, max_rows, cache_keyword, last_logits
        self.waiting: collections.deque[EngineRequest] = collections.deque()
        self.rows: list[EngineRequest] = []
        self.key: str | None = None
        self._inputs: dict = {}  # the next forward's inputs
        self._mask = self._positions = torch.empty(0)
        self._cache: DynamicCache | None = None

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
        if first:
            self._first_inputs()
        try:
            with self.pool.peft_adapter(self.key) as model:
                out = model(**self._inputs, attention_mask=self._mask, position_ids=self._positions, use_cache=True,
                            **{self.cache_keyword: self._cache})  # fmt: skip
        except Exception as exc:  # the lane's forward failed: its rows end with the error, the engine goes on
            log.exception("a lane step of %d rows for %s failed", len(self.rows), self.key)
            for s in self.rows:
                end(s, "error", events, exc)
            self.rows, self._cache = [], None
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
        self._inputs = {"input_ids": torch.tensor(tokens, device=self.pool.device)[:, None]}
        self._positions = self._positions[:, -1:] + 1
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(self.rows), 1)], 1)
        self._keep_unfinished()

    def _start(self) -> None:
        """Take the requests for the adapter first in line (up to ``max_rows``) as the lane's new batch."""
        self.key = self.waiting[0].adapter
        self.rows = [s for s in self.waiting if s.adapter == self.key][: self.max_rows]
        for s in self.rows:
            self.waiting.remove(s)
        self._cache, self._inputs = None, {}

    def _first_inputs(self) -> None:
        """The first forward's inputs: the prompts left-padded, as ``generate`` pads a batch."""
        device, width = self.pool.device, max(len(s.prompt) for s in self.rows)
        ids = torch.tensor([[0] * (width - len(s.prompt)) + s.prompt for s in self.rows], device=device)
        self._mask = torch.tensor(
            [[0] * (width - len(s.prompt)) + [1] * len(s.prompt) for s in self.rows], device=device
        )
        self._positions = (self._mask.cumsum(-1) - 1).masked_fill(self._mask == 0, 1)
        self._inputs, self._cache = {"input_ids": ids}, DynamicCache()
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
