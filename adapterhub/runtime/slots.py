"""Slotted linear layers: the per-layer LoRA slot tensors and the forward that adds each row's delta.

``make_slotted(module, ...)`` turns a target linear (``nn.Linear``, bitsandbytes ``Linear4bit`` /
``Linear8bitLt``, ...) into a slotted layer once, when the pool is created: the module keeps its identity,
weights and state dict, and its class becomes a subclass of its own class whose ``forward`` adds the LoRA
delta of the active slots. Being still an instance of its original class is what lets the non-slottable
methods (DoRA, IA3, ...) attach through peft on top of it, and keeps quantized weights where bitsandbytes
expects them. Loading an adapter afterwards is ``LayerSlots.stage`` and ``copy_all`` (tensor copies),
switching is changing ``ActiveRows`` (an index): no module is replaced again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adapterhub.kernels import KernelChoice


@dataclass
class ActiveRows:
    """Which slot each row of the running batch uses; shared by every slotted layer of one pool.

    ``slot_ids`` is None when no row uses an adapter (the base runs untouched); ``single`` is the one slot
    when all rows share it (a plain two-matmul path), else None (the gathered kernel).
    """

    slot_ids: torch.Tensor | None = None  # (batch,) int64
    single: int | None = None


class LayerSlots:
    """The slots of one layer: ``A[slots + 1, r_max, d_in]``, ``B[slots + 1, d_out, r_max]``, ``scales[slots + 1]``.

    The last slot stays zero: rows without an adapter gather it, so the gathered kernel needs no mask.
    """

    def __init__(self, rows: ActiveRows, d_in: int, d_out: int, slots: int, max_rank: int, dtype: torch.dtype,
                 device: torch.device, single: KernelChoice, gather: KernelChoice) -> None:  # fmt: skip
        self.rows = rows
        self.A = torch.zeros(slots + 1, max_rank, d_in, dtype=dtype, device=device)
        self.B = torch.zeros(slots + 1, d_out, max_rank, dtype=dtype, device=device)
        self.scales = torch.zeros(slots + 1, dtype=torch.float32, device=device)
        self.scale_values = [0.0] * (slots + 1)  # the same, as floats, for the single-slot path
        self.ranks = [0] * (slots + 1)
        self.single_kernel, self.gather_kernel = single.fn, gather.fn
        # Each slot's views, made once: a swap writes every layer (210 in SmolLM2), and indexing
        # `A[slot, :rank]` anew in each write took a third of the swap's time on a CPU.
        self._slot_views = [(self.A[s], self.B[s], self.scales[s]) for s in range(slots + 1)]

    @property
    def nbytes(self) -> int:
        return self.A.nbytes + self.B.nbytes + self.scales.nbytes

    def stage(self, slot: int, A: torch.Tensor, B: torch.Tensor, scale: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Put one adapter's ``A`` (r, d_in) and ``B`` (d_out, r) in ``slot``, all but the two copies, which come
        back as (slot view, source) pairs: a swap fills every layer, then makes all ~400 copies of a model in
        one ``copy_all`` call. Padding ranks stay zero."""
        rank = A.shape[0]
        slot_A, slot_B, slot_scale = self._slot_views[slot]
        if rank < slot_A.shape[0]:
            if self.ranks[slot] > rank:
                slot_A[rank:].zero_()
                slot_B[:, rank:].zero_()
            slot_A, slot_B = slot_A[:rank], slot_B[:, :rank]
        slot_scale.fill_(scale)
        self.scale_values[slot], self.ranks[slot] = scale, rank
        return [(slot_A, A), (slot_B, B)]

    def clear(self, slot: int) -> None:
        """Forget what ``slot`` holds (an adapter that does not target this layer, or an unload)."""
        if self.ranks[slot]:
            self.A[slot].zero_()
            self.B[slot].zero_()
        self.scales[slot] = 0.0
        self.scale_values[slot], self.ranks[slot] = 0.0, 0

    def delta(self, x: torch.Tensor) -> torch.Tensor | None:
        """The LoRA delta of the active rows for input ``x`` (batch, *, d_in), or None when there is none."""
        rows = self.rows
        if rows.slot_ids is None:
            return None
        if rows.single is not None:
            slot = rows.single
            rank = self.ranks[slot]
            if not rank:
                return None
            A, B = self.A[slot, :rank], self.B[slot, :, :rank]
            return self.single_kernel(x.to(A.dtype), A, B, self.scale_values[slot])
        return self.gather_kernel(x.to(self.A.dtype), self.A, self.B, self.scales, rows.slot_ids)


def copy_all(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Copy each source into its destination (converting dtype and device) in one call: a loop of ``copy_``
    spent a quarter of a 20 MB swap in per-call overhead on a CPU."""
    if pairs:
        destinations, sources = zip(*pairs)
        torch._foreach_copy_(list(destinations), list(sources))


class HeadSlots:
    """Per-slot copies of a small classification head that adapters save whole (peft's ``modules_to_save``).

    ``W[slots + 1, d_out, d_in]`` and ``b[slots + 1, d_out]``; every slot starts as the base head, and the last
    one (rows without an adapter) stays the base head.
    """

    def __init__(self, rows: ActiveRows, module: torch.nn.Linear, slots: int) -> None:
        self.rows = rows
        weight = module.weight.detach()
        bias = module.bias.detach() if module.bias is not None else weight.new_zeros(weight.shape[0])
        self.W = weight.unsqueeze(0).repeat(slots + 1, 1, 1)
        self.b = bias.unsqueeze(0).repeat(slots + 1, 1)

    @property
    def nbytes(self) -> int:
        return self.W.nbytes + self.b.nbytes

    def write(self, slot: int, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.W[slot].copy_(weight)
        self.b[slot].copy_(bias if bias is not None else self.b[-1])

    def clear(self, slot: int) -> None:
        self.write(slot, self.W[-1], self.b[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.rows
        if rows.single is not None:
            return torch.nn.functional.linear(x, self.W[rows.single], self.b[rows.single])
        batch = x.shape[0]
        W = self.W.index_select(0, rows.slot_ids)  # (batch, d_out, d_in)
        b = self.b.index_select(0, rows.slot_ids)  # (batch, d_out)
        out = torch.baddbmm(b[:, None, :], x.reshape(batch, -1, x.shape[-1]), W.transpose(1, 2))
        return out.reshape(*x.shape[:-1], W.shape[1])  # (batch, *, d_out)


class SlottedLayer:
    """Mixin put in front of a linear's own class: its forward plus the active slots' LoRA delta."""

    lora_slots: LayerSlots

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = super().forward(x, *args, **kwargs)
        delta = self.lora_slots.delta(x)
        return result if delta is None else result + delta.to(result.dtype)


class SlottedHead:
    """Mixin for a classification head: each row goes through its adapter's copy of the head."""

    lora_slots: HeadSlots

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.lora_slots.rows.slot_ids is None:
            return super().forward(x, *args, **kwargs)
        return self.lora_slots.forward(x.to(self.lora_slots.W.dtype))


_SLOTTED_CLASSES: dict[tuple[type, type], type] = {}


def _slotted_class(mixin: type, cls: type) -> type:
    if (mixin, cls) not in _SLOTTED_CLASSES:
        _SLOTTED_CLASSES[(mixin, cls)] = type(f"{mixin.__name__}{cls.__name__}", (mixin, cls), {"__module__": __name__})
    return _SLOTTED_CLASSES[(mixin, cls)]


def make_slotted(module: torch.nn.Module, slots: LayerSlots | HeadSlots) -> None:
    """Give ``module`` its slots, once: its class becomes the slotted subclass of its class."""
    if isinstance(module, (SlottedLayer, SlottedHead)):
        raise ValueError(f"{type(module).__name__} already has adapter slots (one pool per base)")
    mixin = SlottedHead if isinstance(slots, HeadSlots) else SlottedLayer
    module.lora_slots = slots
    module.__class__ = _slotted_class(mixin, type(module))


def remove_slots(module: torch.nn.Module) -> None:
    """Undo ``make_slotted``: the module is exactly its original class again."""
    if isinstance(module, (SlottedLayer, SlottedHead)):
        module.__class__ = type(module).__mro__[2]
        del module.lora_slots
