"""Slotted linear layers: the per-layer slot tensors and the forward that applies each row's slot contents.

``make_slotted(module, ...)`` turns a target linear (``nn.Linear``, bitsandbytes ``Linear4bit`` /
``Linear8bitLt``, ...) into a slotted layer once, when the pool is created: the module keeps its identity,
weights and state dict, and its class becomes a subclass of its own class whose ``forward`` applies the
active slots' contents (a low-rank delta, input and output scales: ``SlotContents``). Being still an instance
of its original class is what lets the non-slottable methods (prefix tuning, bottleneck adapters, ...)
attach through peft on top of it, and keeps quantized weights where bitsandbytes expects them. Loading an adapter afterwards is ``LayerSlots.stage`` and ``copy_all`` (tensor copies),
switching is changing ``ActiveRows`` (an index): no module is replaced again.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from adapterhub.kernels import KernelChoice
from adapterhub.module_classes import mixed_in
from adapterhub.runtime.packed import PackedWeight
from adapterhub.specs import SlotContents


@dataclass
class ActiveRows:
    """Which slot each row of the running batch uses; shared by every slotted layer of one pool.

    ``slot_ids`` is None when no row uses an adapter (the base runs untouched); ``single`` is the one slot
    when all rows share it (a plain two-matmul path), else None (the gathered kernel); ``slots`` are the
    distinct slots of the batch (a layer checks them for scaling vectors before paying for a gather).
    """

    slot_ids: torch.Tensor | None = None  # (batch,) int64
    single: int | None = None
    slots: tuple[int, ...] = ()
    vectors: bool = False  # some adapter of the batch has scaling vectors somewhere (else no layer looks)
    span: int = 0  # every slot of the batch is below it: the gathered kernel is given only those slots


class LayerSlots:
    """The slots of one layer: ``A[slots + 1, r_max, d_in]``, ``B[slots + 1, d_out, r_max]`` (a transposed view: stored
    ``[slots + 1, r_max, d_out]``), ``scales[slots + 1]``,
    and the scaling vectors ``in_scale[slots + 1, d_in]``, ``out_scale`` and ``out_shift[slots + 1, d_out]``
    (``SlotContents`` says what each does).

    The last slot stays empty (no low-rank pair, unit scales): rows without an adapter gather it, so the
    gathered kernel needs no mask. A slot's vectors are only applied when some row of the batch uses a slot
    that has them, so a batch of plain LoRA adapters pays nothing for them.
    """

    def __init__(self, rows: ActiveRows, d_in: int, d_out: int, slots: int, max_rank: int, dtype: torch.dtype,
                 device: torch.device, single: KernelChoice, gather: KernelChoice) -> None:  # fmt: skip
        self.rows, self.max_rank = rows, max_rank
        self.A = torch.zeros(slots + 1, max_rank, d_in, dtype=dtype, device=device)
        # B is stored transposed, (slots + 1, r_max, d_out), and seen through a view in the kernels' shape: the torch
        # reference then takes every slot's B as one (slots * r_max, d_out) matrix without a copy (kernels.py).
        self.B = torch.zeros(slots + 1, max_rank, d_out, dtype=dtype, device=device).transpose(1, 2)
        self.scales = torch.zeros(slots + 1, dtype=torch.float32, device=device)
        self.in_scale = torch.ones(slots + 1, d_in, dtype=dtype, device=device)
        self.out_scale = torch.ones(slots + 1, d_out, dtype=dtype, device=device)
        self.out_shift = torch.zeros(slots + 1, d_out, dtype=dtype, device=device)
        self.scale_values = [0.0] * (slots + 1)  # the same, as floats, for the single-slot path
        self.ranks = [0] * (slots + 1)
        self.scales_in = [False] * (slots + 1)  # slot has an input scale
        self.scales_out = [False] * (slots + 1)  # slot has an output scale / shift
        self.single_kernel, self.gather_kernel = single.fn, gather.fn
        self.packed: PackedWeight | None = None  # the base weight packed for the CPU (packed.py), set by the pool
        # Each slot's views, made once: a swap writes every layer (210 in SmolLM2), and indexing
        # `A[slot, :rank]` anew in each write took a third of the swap's time on a CPU.
        self._slot_views = [(self.A[s], self.B[s], self.scales[s]) for s in range(slots + 1)]
        # The first n slots, for each n: a batch whose slots all lie below n gives the gathered kernel only those
        # (with 8 adapters and no base row, the all-slots product skips the empty 9th slot's ninth of its work).
        self._spans = [(self.A[:n], self.B[:n], self.scales[:n]) for n in range(slots + 2)]

    @property
    def nbytes(self) -> int:
        vectors = self.in_scale.nbytes + self.out_scale.nbytes + self.out_shift.nbytes
        return self.A.nbytes + self.B.nbytes + self.scales.nbytes + vectors

    def stage(self, slot: int, contents: SlotContents) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Put one adapter's contents in ``slot``, all but the tensor copies, which come back as (slot view,
        source) pairs: a swap fills every layer, then makes all ~400 copies of a model in one ``copy_all`` call.
        Padding ranks stay zero."""
        # Plain attribute reads only: a swap stages every layer (210 in SmolLM2), so this runs ~200 times per swap.
        A = contents.A
        rank = 0 if A is None else A.shape[0]
        slot_A, slot_B, slot_scale = self._slot_views[slot]
        if self.ranks[slot] > rank:
            slot_A[rank:].zero_()
            slot_B[:, rank:].zero_()
        if rank < self.max_rank:
            slot_A, slot_B = slot_A[:rank], slot_B[:, :rank]
        scale = contents.scale if rank else 0.0
        if self.scale_values[slot] != scale:  # adapters mostly share alpha / r: 210 fill_ calls were 0.6 ms of a swap
            slot_scale.fill_(scale)
            self.scale_values[slot] = scale
        self.ranks[slot] = rank
        copies = [(slot_A, A), (slot_B, contents.B)] if rank else []
        if contents.in_scale is None and contents.out_scale is None and contents.out_shift is None:
            if self.scales_in[slot] or self.scales_out[slot]:  # the previous adapter of this slot had vectors
                self._clear_vectors(slot)
            return copies
        self._clear_vectors(slot)
        for view, source in ((self.in_scale[slot], contents.in_scale), (self.out_scale[slot], contents.out_scale),
                             (self.out_shift[slot], contents.out_shift)):  # fmt: skip
            if source is not None:
                copies.append((view, source))
        self.scales_in[slot] = contents.in_scale is not None
        self.scales_out[slot] = contents.out_scale is not None or contents.out_shift is not None
        return copies

    def _clear_vectors(self, slot: int) -> None:
        """Back to unit scales and no shift (the identity) in ``slot``."""
        if self.scales_in[slot]:
            self.in_scale[slot].fill_(1.0)
        if self.scales_out[slot]:
            self.out_scale[slot].fill_(1.0)
            self.out_shift[slot].zero_()
        self.scales_in[slot] = self.scales_out[slot] = False

    def clear(self, slot: int) -> None:
        """Forget what ``slot`` holds (an adapter that does not target this layer, or an unload). Its scale stays: with
        A and B zero it multiplies nothing, and the next adapter in the slot mostly has the same one (``stage``)."""
        if self.ranks[slot]:
            self.A[slot].zero_()
            self.B[slot].zero_()
        self._clear_vectors(slot)
        self.ranks[slot] = 0

    def _per_row(self, vectors: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Each row's vector, shaped to broadcast over ``like`` (batch, *, features)."""
        rows = self.rows
        if rows.single is not None:
            return vectors[rows.single]
        gathered = vectors.index_select(0, rows.slot_ids)  # (batch, features)
        return gathered.reshape(gathered.shape[0], *([1] * (like.dim() - 2)), gathered.shape[-1])

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` scaled per row by the active slots' input scales (IA3 on feed-forward layers), or ``x``."""
        rows = self.rows
        if not rows.vectors or not any(self.scales_in[s] for s in rows.slots):
            return x
        return x * self._per_row(self.in_scale, x).to(x.dtype)

    def finish(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """The layer's output: the base ``result`` plus each row's low-rank delta, then its output scale and shift."""
        delta = self.delta(x)
        if delta is not None:
            result = result + delta.to(result.dtype)
        rows = self.rows
        if not rows.vectors or not any(self.scales_out[s] for s in rows.slots):
            return result
        scale = self._per_row(self.out_scale, result).to(result.dtype)
        shift = self._per_row(self.out_shift, result).to(result.dtype)
        return torch.addcmul(shift, result, scale)

    def delta(self, x: torch.Tensor) -> torch.Tensor | None:
        """The low-rank delta of the active rows for input ``x`` (batch, *, d_in), or None when there is none."""
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
        if not any(self.ranks[s] for s in rows.slots):
            return None
        A, B, scales = self._spans[rows.span]
        return self.gather_kernel(x.to(A.dtype), A, B, scales, rows.slot_ids)


def copy_all(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Copy each source into its destination (converting dtype and device) in one call: a loop of ``copy_``
    spent a quarter of a 20 MB swap in per-call overhead on a CPU. On a CPU with more than one torch thread, half
    the copies run on a second thread meanwhile (torch releases the GIL): each of a swap's ~400 small copies runs on
    one core, and writing B into its transposed slot storage is a strided copy; the two halves took 2.4 ms where one
    call took 3.6 (SmolLM2's 210 layers, rank 16)."""
    if not pairs:
        return
    if len(pairs) >= PARALLEL_COPIES and pairs[0][0].device.type == "cpu" and torch.get_num_threads() > 1:
        half = len(pairs) // 2  # by position, not alternately: a layer's A and B copies come in pairs
        theirs = _copier().submit(_copy, pairs[half:])
        _copy(pairs[:half])
        theirs.result()
    else:
        _copy(pairs)


PARALLEL_COPIES = 32  # fewer copies than this are not worth handing half to another thread
_copy_thread: ThreadPoolExecutor | None = None


def _copier() -> ThreadPoolExecutor:
    global _copy_thread
    if _copy_thread is None:
        _copy_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adapterhub-slot-copy")
    return _copy_thread


def _copy(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
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
    """Mixin put in front of a linear's own class: its forward, adapted by each row's slot contents."""

    adapter_slots: LayerSlots

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        slots = self.adapter_slots
        scaled = slots.scale_input(x)
        result = None if slots.packed is None or args or kwargs else slots.packed.linear(scaled, self.bias)
        if result is None:
            result = super().forward(scaled, *args, **kwargs)
        return slots.finish(x, result)


class SlottedHead:
    """Mixin for a classification head: each row goes through its adapter's copy of the head."""

    adapter_slots: HeadSlots

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.adapter_slots.rows.slot_ids is None:
            return super().forward(x, *args, **kwargs)
        return self.adapter_slots.forward(x.to(self.adapter_slots.W.dtype))


def make_slotted(module: torch.nn.Module, slots: LayerSlots | HeadSlots) -> None:
    """Give ``module`` its slots, once: its class becomes the slotted subclass of its class."""
    if isinstance(module, (SlottedLayer, SlottedHead)):
        raise ValueError(f"{type(module).__name__} already has adapter slots (one pool per base)")
    mixin = SlottedHead if isinstance(slots, HeadSlots) else SlottedLayer
    module.adapter_slots = slots
    module.__class__ = mixed_in(mixin, type(module))


def own_class(module: torch.nn.Module) -> type:
    """The class ``module`` had before ``make_slotted`` (its own class when it is not slotted)."""
    if isinstance(module, (SlottedLayer, SlottedHead)):
        return type(module).__mro__[2]  # the slotted class, its mixin, then the original class
    return type(module)


def remove_slots(module: torch.nn.Module) -> None:
    """Undo ``make_slotted``: the module is exactly its original class again."""
    if isinstance(module, (SlottedLayer, SlottedHead)):
        module.__class__ = own_class(module)
        del module.adapter_slots
