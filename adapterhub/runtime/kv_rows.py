"""A batch's KV cache whose rows come and go: the storage under continuous batching.

transformers' ``DynamicCache`` holds one ``(batch, kv_heads, length, head_dim)`` key and value tensor per layer
and grows them by one column per decode step; it has ``batch_select_indices`` to drop rows but nothing to add a
row that was prefilled on its own, at another length. ``RowCache`` adds that (``join``): rows are left-padded to
a common length, each row remembers how many of its columns are real, and a decode step passes the matching
attention mask and per-row positions, as ``generate`` does for a left-padded batch. No row is ever recomputed: a
row's columns are copied (padded) when it joins, then only grow.

The batch's layers grow in place (``GrowingLayer``): a ``DynamicLayer`` concatenates every step, so each decode step
copied the whole cache into newly allocated memory, and on a CPU the fresh pages' faults made that copy cost from
10 to 60 ms of a 16-row SmolLM2 step from one process to the next (docs/serving.md). A growing layer keeps spare
columns after the real ones, writes each step's column into them, and hands attention a view of the filled part.

Only full-attention layers (``DynamicLayer``) are handled: a sliding-window or linear-attention layer keeps a
different shape of state, and ``RowCache.check`` refuses such a model by name.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from adapterhub.errors import AdapterHubError


class RowCache:
    """The KV cache of a batch of rows, ``lengths[i]`` real columns each, right-aligned in ``width`` columns."""

    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.lengths: list[int] = []

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        return 0 if self.cache is None else self.cache.get_seq_length()

    @staticmethod
    def check(cache: DynamicCache) -> None:
        """Refuse a cache with layers this class cannot pad and join (sliding windows, recurrent state)."""
        for layer in cache.layers:
            if type(layer) not in (DynamicLayer, GrowingLayer):
                raise AdapterHubError(
                    f"this model's KV cache has a {type(layer).__name__} layer, which continuous batching cannot pad and "
                    "join; serve it with --batching static"
                )  # fmt: skip

    def join(self, cache: DynamicCache, length: int, rows: int = 1) -> None:
        """Append ``rows`` rows prefilled together (``cache`` of batch ``rows`` holding ``length`` real columns each:
        one request, or copies of one prefill). ``cache`` itself is left as it was."""
        self.check(cache)
        width = max(self.width, cache.get_seq_length())
        mine = self.cache.layers if self.cache is not None else [None] * len(cache.layers)
        self._hold([[(m.keys, m.values)] if m is not None else [] for m in mine], cache.layers, width)
        self.lengths += [length] * rows

    def _hold(self, parts: list[list[tuple[torch.Tensor, torch.Tensor]]], more: list, width: int) -> None:
        """The running cache becomes, per layer, the rows of ``parts`` then of ``more``'s layer (if any), right-aligned
        in ``width`` columns."""
        running = DynamicCache()
        running.layers = [GrowingLayer.holding(layer + ([(extra.keys, extra.values)] if extra is not None else []), width)
                          for layer, extra in zip(parts, more)]  # fmt: skip
        self.cache = running

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order), and drop the padding columns no remaining row needs."""
        if not rows:
            self.cache, self.lengths = None, []
            return
        self.lengths = [self.lengths[i] for i in rows]
        index = torch.tensor(rows, device=self.cache.layers[0].keys.device)
        spare = self.width - max(self.lengths)
        layers = self.cache.layers
        self._hold([[(layer.keys.index_select(0, index)[:, :, spare:], layer.values.index_select(0, index)[:, :, spare:])]
                    for layer in layers], [None] * len(layers), self.width - spare)  # fmt: skip

    def step_inputs(self, cache_keyword: str = "past_key_values") -> dict:
        """The mask, positions and cache (passed as ``cache_keyword``) of one decode step, one new token per row."""
        device = self.cache.layers[0].keys.device
        width = self.width
        lengths = torch.tensor(self.lengths, device=device)
        columns = torch.arange(width + 1, device=device)
        mask = (columns >= (width - lengths)[:, None]).long()  # padding on the left, the new token last
        return {"attention_mask": mask, "position_ids": lengths[:, None], cache_keyword: self.cache,
                "cache_position": torch.tensor([width], device=device)}  # fmt: skip

    def stepped(self) -> None:
        """Record the column the last decode step appended to every row."""
        self.lengths = [n + 1 for n in self.lengths]


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer whose ``keys`` and ``values`` are views of buffers with spare columns after them:
    ``update`` writes the new columns in place and grows the buffers (by a quarter, at least ``SPARE`` columns) only
    when they are full. Everything else of ``DynamicLayer`` (reading ``keys``, ``batch_select_indices``, ...) works on
    the views."""

    SPARE = 64

    @classmethod
    def holding(cls, parts: list[tuple[torch.Tensor, torch.Tensor]], width: int) -> GrowingLayer:
        """A layer holding the rows of each ``(keys, values)`` part (each ``(rows, heads, length, dim)``) one after
        another, each right-aligned in ``width`` columns with zeros on its left (zeros, not garbage: masked columns
        still enter attention's products)."""
        layer = cls()
        keys, values = parts[0]
        rows = sum(k.shape[0] for k, _ in parts)
        layer._keys, layer._values = _buffer(keys, rows, width), _buffer(values, rows, width)
        start = 0
        for k, v in parts:
            layer._keys[start : start + k.shape[0], :, width - k.shape[2] : width] = k
            layer._values[start : start + k.shape[0], :, width - v.shape[2] : width] = v
            start += k.shape[0]
        layer.device, layer.is_initialized = keys.device, True
        layer._show(width)
        return layer

    def _show(self, width: int) -> None:
        """Expose the first ``width`` columns of the buffers as ``keys`` and ``values``."""
        self.width = width
        self.keys, self.values = self._keys[:, :, :width], self._values[:, :, :width]
        self._shown = (self.keys, self.values)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is not self._shown[0] or self.values is not self._shown[1]:
            # a DynamicLayer method replaced the views (crop, batch_select_indices, ...): start again from its result
            replaced = GrowingLayer.holding([(self.keys, self.values)], self.keys.shape[2])
            self._keys, self._values = replaced._keys, replaced._values
            self._show(replaced.width)
        new = key_states.shape[2]
        if self.width + new > self._keys.shape[2]:
            keys, values = self.keys, self.values  # the filled columns stay first; the new ones follow
            self._keys, self._values = (
                _buffer(keys, keys.shape[0], self.width + new),
                _buffer(values, values.shape[0], self.width + new),
            )
            self._keys[:, :, : self.width], self._values[:, :, : self.width] = keys, values
        self._keys[:, :, self.width : self.width + new] = key_states
        self._values[:, :, self.width : self.width + new] = value_states
        self._show(self.width + new)
        return self.keys, self.values


def _buffer(like: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    """Zeros for ``rows`` rows of ``width`` columns of ``like``'s heads and head size, plus spare columns."""
    capacity = width + max(GrowingLayer.SPARE, width // 4)
    return like.new_zeros(rows, like.shape[1], capacity, like.shape[3])
