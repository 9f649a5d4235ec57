"""A batch's KV cache whose rows come and go: the storage under continuous batching.

transformers' ``DynamicCache`` holds one ``(batch, kv_heads, length, head_dim)`` key and value tensor per layer
and grows them by one column per decode step; it has ``batch_select_indices`` to drop rows but nothing to add a
row that was prefilled on its own, at another length. ``RowCache`` adds that (``join``): rows are left-padded to
a common length, each row remembers how many of its columns are real, and a decode step passes the matching
attention mask and per-row positions, as ``generate`` does for a left-padded batch. No row is ever recomputed: a
row's columns are copied (padded) when it joins, then only grow.

Only full-attention layers (``DynamicLayer``) are handled: a sliding-window or linear-attention layer keeps a
different shape of state, and ``RowCache.check`` refuses such a model by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
            if type(layer) is not DynamicLayer:
                raise AdapterHubError(
                    f"this model's KV cache has a {type(layer).__name__} layer, which continuous batching cannot pad and "
                    "join; serve it with --batching static"
                )  # fmt: skip

    def join(self, cache: DynamicCache, length: int, rows: int = 1) -> None:
        """Append ``rows`` rows prefilled together (``cache`` of batch ``rows`` holding ``length`` real columns each:
        one request, or copies of one prefill)."""
        self.check(cache)
        if self.cache is None:
            self.cache, self.lengths = cache, [length] * rows
            return
        width = max(self.width, cache.get_seq_length())
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)])
            mine.values = torch.cat([_left_pad(mine.values, width), _left_pad(theirs.values, width)])
        self.lengths += [length] * rows

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order), and drop the padding columns no remaining row needs."""
        if not rows:
            self.cache, self.lengths = None, []
            return
        self.lengths = [self.lengths[i] for i in rows]
        index = torch.tensor(rows, device=self.cache.layers[0].keys.device)
        spare = self.width - max(self.lengths)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, spare:]
            layer.values = layer.values.index_select(0, index)[:, :, spare:]

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


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """``(batch, heads, length, dim)`` padded with zeros on the left of the length axis to ``width``."""
    missing = width - tensor.shape[2]
    return tensor if missing == 0 else F.pad(tensor, (0, 0, missing, 0))
