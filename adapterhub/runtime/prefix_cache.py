"""Prompt prefixes shared across requests: their KV entries kept per adapter, so the next request skips them.

Requests for one adapter often start alike (a system prompt, few-shot examples). After a request's prefill, the
KV entries of its prompt's whole ``BLOCK``-token blocks are kept here; a later request for the same adapter key
whose prompt starts with the same blocks gets them copied into its cache and prefills only the rest.

A block is found by a hash chained through every block before it and, at the root, the adapter key
(``name@version``), as vLLM's automatic prefix caching does: a block's entries depend on every token before it
and on the adapter (LoRA changes the keys and values of every layer), and a tag moved to a new version gives a new
key, so the old version's blocks are never reused. Each block also keeps its parent's hash and its own tokens and
a lookup compares them, so a hash collision costs a miss, never a wrong answer.

Blocks are evicted least recently used under a byte bound; a lookup or insert touches a chain from its last block
to its first, so a prefix is evicted from its end and what stays is always reachable from the root.

Written here rather than taken from a library: transformers' caches hold one sequence's entries, and vLLM's and
SGLang's prefix caches manage their own paged memory; what is needed is a map from token prefixes to the
``DynamicCache`` tensors the engine already uses.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

BLOCK = 16  # tokens per cached block: shorter blocks match more, at more bookkeeping per token


@dataclass
class _Block:
    parent: int | None  # the previous block's hash (None: the first block)
    adapter: str | None
    tokens: tuple[int, ...]
    keys: list[torch.Tensor]  # one (1, kv_heads, BLOCK, head_dim) per layer
    values: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


class PrefixCache:
    """The KV entries of prompts' leading blocks, per adapter key, at most ``max_bytes`` in all."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.blocks: collections.OrderedDict[int, _Block] = collections.OrderedDict()  # least recently used first
        self.bytes = 0
        self.hits = self.reused_tokens = 0  # requests that reused a prefix, and the prompt tokens they skipped

    def _chain(self, adapter: str | None, tokens: list[int], blocks: int) -> list[tuple[int, int | None, tuple]]:
        """``(hash, parent hash, tokens)`` of the first ``blocks`` blocks of ``tokens`` for ``adapter``."""
        chain, parent = [], None
        for i in range(blocks):
            block = tuple(tokens[i * BLOCK : (i + 1) * BLOCK])
            key = hash((adapter, parent, block))
            chain.append((key, parent, block))
            parent = key
        return chain

    def _touch(self, keys: list[int]) -> None:
        for key in reversed(keys):  # the first block ends most recent: a chain is evicted from its end
            self.blocks.move_to_end(key)

    def lookup(self, adapter: str | None, prompt: list[int]) -> tuple[int, DynamicCache | None]:
        """The longest cached prefix of ``prompt`` that leaves at least one token to prefill (the request needs the
        logits of its last prompt token): how many tokens it covers, and a new cache holding their entries."""
        found = []
        for key, parent, block in self._chain(adapter, prompt, (len(prompt) - 1) // BLOCK):
            entry = self.blocks.get(key)
            if entry is None or entry.parent != parent or entry.tokens != block or entry.adapter != adapter:
                break
            found.append((key, entry))
        if not found:
            return 0, None
        self._touch([key for key, _ in found])
        cache = DynamicCache()
        for layer in range(len(found[0][1].keys)):
            keys = torch.cat([entry.keys[layer] for _, entry in found], dim=2)
            values = torch.cat([entry.values[layer] for _, entry in found], dim=2)
            cache.update(keys, values, layer)
        self.hits += 1
        self.reused_tokens += len(found) * BLOCK
        return len(found) * BLOCK, cache

    def insert(self, adapter: str | None, prompt: list[int], cache: DynamicCache) -> None:
        """Keep the entries of ``prompt``'s whole blocks from ``cache`` (one row, the prompt's entries first), then
        evict the least recently used blocks beyond the bound."""
        if self.max_bytes <= 0 or any(type(layer) is not DynamicLayer for layer in cache.layers):
            return  # sliding windows or recurrent state: not a prefix of plain columns
        length = min(len(prompt), cache.get_seq_length())
        chain = self._chain(adapter, prompt, length // BLOCK)
        for i, (key, parent, block) in enumerate(chain):
            if key in self.blocks:
                continue
            columns = slice(i * BLOCK, (i + 1) * BLOCK)
            entry = _Block(parent, adapter, block,  # clones: the request's own tensors grow and are dropped
                           [layer.keys[:1, :, columns].clone() for layer in cache.layers],
                           [layer.values[:1, :, columns].clone() for layer in cache.layers])  # fmt: skip
            self.blocks[key] = entry
            self.bytes += entry.nbytes
        self._touch([key for key, _, _ in chain])
        while self.bytes > self.max_bytes and self.blocks:
            _, evicted = self.blocks.popitem(last=False)
            self.bytes -= evicted.nbytes

    def __len__(self) -> int:
        return len(self.blocks)
