"""SGMV: segmented gather matrix multiply, the LoRA delta for batches whose rows come in runs sharing an
adapter (prefill, or requests grouped by adapter).

    delta[t] = scales[s] * (x[t] @ A_slots[s].T) @ B_slots[s].T      with s = slot_ids[t]; zero where s == -1

Shapes as in ``bgmv``: x (tokens, d_in), A_slots (slots, r_max, d_in), B_slots (slots, d_out, r_max),
scales (slots,), slot_ids (tokens,) int, delta (tokens, d_out).

Segments are read from ``slot_ids`` itself, inside the kernel: each program owns a tile of BLOCK_M rows and
one block of d_out, and loops over the distinct adapters present in its tile, doing one tensor-core tile
product (shrink to r, then expand) per adapter with the other rows masked to zero. A contiguous segment
therefore costs what a dense LoRA matmul costs, a tile straddling two segments does two products, and no
segment table has to be built on the host (no device-to-host sync, one launch). Empty segments simply
have no rows. ``segments_to_slot_ids`` turns a (lengths, slots) segment list into ``slot_ids``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from adapterhub_triton.support import dot_options

MIN_DOT = 16  # tl.dot needs every dimension >= 16


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min(a, b):
    return tl.minimum(a, b)


# tl.max / tl.min (like tl.zeros) are jit functions of triton's own, compiled-only when triton was imported
# before TRITON_INTERPRET=1 was set, so we call tl.reduce (and tl.full) ourselves. The interpreter reduces in
# numpy when the combine function is triton's own (never called, only compared); else it loops in Python.
_MAX = getattr(tl.standard, "_elementwise_max", _max)
_MIN = getattr(tl.standard, "_elementwise_min", _min)


@triton.jit
def _sgmv_kernel(
    x_ptr, a_ptr, b_ptr, scale_ptr, slot_ptr, out_ptr,
    tokens, d_in, d_out, rank,
    stride_xt, stride_xk,
    stride_as, stride_ar, stride_ak,
    stride_bs, stride_bn, stride_br,
    stride_ot, stride_on,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    slots = tl.load(slot_ptr + offs_m, mask=offs_m < tokens, other=-1)
    todo = slots >= 0
    acc = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)
    while tl.reduce(todo.to(tl.int32), 0, _MAX) > 0:
        slot = tl.reduce(tl.where(todo, slots, 2147483647), 0, _MIN)
        rows = todo & (slots == slot)
        slot64 = slot.to(tl.int64)

        shrunk = tl.full([BLOCK_M, BLOCK_R], 0.0, tl.float32)  # (m, r) = x[rows] @ A[slot].T
        for k0 in range(0, d_in, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(
                x_ptr + offs_m[:, None] * stride_xt + offs_k[None, :] * stride_xk,
                mask=rows[:, None] & (offs_k[None, :] < d_in),
                other=0.0,
            )  # (m, k)
            a_t = tl.load(
                a_ptr + slot64 * stride_as + offs_k[:, None] * stride_ak + offs_r[None, :] * stride_ar,
                mask=(offs_k[:, None] < d_in) & (offs_r[None, :] < rank),
                other=0.0,
            )  # (k, r)
            if UPCAST:
                x, a_t = x.to(tl.float32), a_t.to(tl.float32)
            shrunk += tl.dot(x, a_t, input_precision=PRECISION)

        b_t = tl.load(
            b_ptr + slot64 * stride_bs + offs_r[:, None] * stride_br + offs_n[None, :] * stride_bn,
            mask=(offs_r[:, None] < rank) & (offs_n[None, :] < d_out),
            other=0.0,
        )  # (r, n)
        shrunk = shrunk.to(b_t.dtype)  # rounded like the unfused matmuls round it
        if UPCAST:
            shrunk, b_t = shrunk.to(tl.float32), b_t.to(tl.float32)
        scale = tl.load(scale_ptr + slot64)
        acc += tl.dot(shrunk, b_t, input_precision=PRECISION) * scale
        todo = todo & (slots != slot)

    out = out_ptr + offs_m[:, None] * stride_ot + offs_n[None, :] * stride_on
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(offs_m[:, None] < tokens) & (offs_n[None, :] < d_out))


def sgmv(
    x: torch.Tensor,
    A_slots: torch.Tensor,
    B_slots: torch.Tensor,
    scales: torch.Tensor,
    slot_ids: torch.Tensor,
    *,
    block_m: int = 32,
    block_n: int = 64,
    block_k: int = 64,
) -> torch.Tensor:
    """The gathered LoRA delta (tokens, d_out) in one launch, one program per tile of rows and output block."""
    tokens, d_in = x.shape
    slots, r_max, _ = A_slots.shape
    d_out = B_slots.shape[1]
    delta = torch.empty(tokens, d_out, device=x.device, dtype=x.dtype)
    if tokens == 0 or d_out == 0:
        return delta
    if r_max == 0 or slots == 0:
        return delta.zero_()
    scales = scales.to(device=x.device, dtype=torch.float32).contiguous()
    slot_ids = slot_ids.to(device=x.device, dtype=torch.int32).contiguous()
    block_m = max(MIN_DOT, min(block_m, triton.next_power_of_2(tokens)))
    block_n = max(MIN_DOT, min(block_n, triton.next_power_of_2(d_out)))
    block_k = max(MIN_DOT, min(block_k, triton.next_power_of_2(d_in)))
    grid = (triton.cdiv(tokens, block_m), triton.cdiv(d_out, block_n))
    _sgmv_kernel[grid](
        x, A_slots, B_slots, scales, slot_ids, delta,
        tokens, d_in, d_out, r_max,
        *x.stride(), *A_slots.stride(), *B_slots.stride(), *delta.stride(),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_R=max(MIN_DOT, triton.next_power_of_2(r_max)),
        **dot_options(x.dtype, _sgmv_kernel),
    )  # fmt: skip
    return delta


def segments_to_slot_ids(lengths: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Per-row slot ids from segments: ``lengths[i]`` contiguous rows use slot ``slots[i]`` (lengths may be 0)."""
    return torch.repeat_interleave(slots.to(torch.int32), lengths.long())


def sgmv_reference(
    x: torch.Tensor, A_slots: torch.Tensor, B_slots: torch.Tensor, scales: torch.Tensor, slot_ids: torch.Tensor
) -> torch.Tensor:
    """Plain torch, in float32: one dense LoRA matmul per distinct adapter over the rows that use it."""
    delta = torch.zeros(x.shape[0], B_slots.shape[1], dtype=torch.float32, device=x.device)
    for slot in slot_ids.unique().tolist():
        if slot < 0:
            continue
        rows = slot_ids == slot
        delta[rows] = (x[rows].float() @ A_slots[slot].float().T) @ B_slots[slot].float().T * float(scales[slot])
    return delta.to(x.dtype)
