"""BGMV: batched gather matrix-vector LoRA delta, one token per row, each row its own adapter (decode).

    delta[t] = scales[s] * B_slots[s] @ (A_slots[s] @ x[t])      with s = slot_ids[t]; zero where s == -1

Shapes: x (tokens, d_in), A_slots (slots, r_max, d_in), B_slots (slots, d_out, r_max), scales (slots,),
slot_ids (tokens,) int, delta (tokens, d_out). Adapters of rank below ``r_max`` are zero-padded in their
slot, which adds nothing. One program per (token, block of d_out): it gathers its token's adapter, shrinks
``x[t]`` to ``r_max`` values (recomputed per output block: r_max * d_in multiply-adds, cheap next to
reading the adapter) and expands one block of the output. Rows without an adapter skip the shrink loop and
store zeros. No tensor cores (one row has nothing to tile), which is why ``sgmv`` serves many rows per adapter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add(a, b):
    return a + b


# tl.sum (like tl.zeros) is a jit function of triton's own, compiled-only when triton was imported before
# TRITON_INTERPRET=1 was set, so we call tl.reduce (and tl.full) ourselves. The interpreter sums in numpy when
# the combine function is triton's own _sum_combine (never called, only compared); else it loops in Python.
_SUM = getattr(tl.standard, "_sum_combine", _add)


@triton.jit
def _bgmv_kernel(
    x_ptr, a_ptr, b_ptr, scale_ptr, slot_ptr, out_ptr,
    d_in, d_out, rank,
    stride_xt, stride_xk,
    stride_as, stride_ar, stride_ak,
    stride_bs, stride_bn, stride_br,
    stride_ot, stride_on,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    has_adapter = slot >= 0
    slot = tl.maximum(slot, 0)

    shrunk = tl.full([BLOCK_R], 0.0, tl.float32)  # (r,) = A[slot] @ x[token]
    for k0 in range(0, tl.where(has_adapter, d_in, 0), BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + token * stride_xt + offs_k * stride_xk, mask=offs_k < d_in, other=0.0)
        a = tl.load(
            a_ptr + slot * stride_as + offs_r[:, None] * stride_ar + offs_k[None, :] * stride_ak,
            mask=(offs_r[:, None] < rank) & (offs_k[None, :] < d_in),
            other=0.0,
        )  # (r, k)
        shrunk += tl.reduce(a.to(tl.float32) * x.to(tl.float32)[None, :], 1, _SUM)

    b = tl.load(
        b_ptr + slot * stride_bs + offs_n[:, None] * stride_bn + offs_r[None, :] * stride_br,
        mask=(offs_n[:, None] < tl.where(has_adapter, d_out, 0)) & (offs_r[None, :] < rank),
        other=0.0,
    )  # (n, r)
    scale = tl.load(scale_ptr + slot)
    delta = tl.reduce(b.to(tl.float32) * shrunk[None, :], 1, _SUM) * scale  # (n,)
    tl.store(out_ptr + token * stride_ot + offs_n * stride_on, delta.to(out_ptr.dtype.element_ty), mask=offs_n < d_out)


def bgmv(
    x: torch.Tensor,
    A_slots: torch.Tensor,
    B_slots: torch.Tensor,
    scales: torch.Tensor,
    slot_ids: torch.Tensor,
    *,
    block_n: int = 64,
    block_k: int = 64,
) -> torch.Tensor:
    """The gathered LoRA delta (tokens, d_out) in one launch, one program per token and output block."""
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
    block_n = min(block_n, triton.next_power_of_2(d_out))
    block_k = min(block_k, triton.next_power_of_2(d_in))
    grid = (tokens, triton.cdiv(d_out, block_n))
    _bgmv_kernel[grid](
        x, A_slots, B_slots, scales, slot_ids, delta,
        d_in, d_out, r_max,
        *x.stride(), *A_slots.stride(), *B_slots.stride(), *delta.stride(),
        BLOCK_K=block_k, BLOCK_N=block_n, BLOCK_R=triton.next_power_of_2(r_max),
    )  # fmt: skip
    return delta


def bgmv_reference(
    x: torch.Tensor, A_slots: torch.Tensor, B_slots: torch.Tensor, scales: torch.Tensor, slot_ids: torch.Tensor
) -> torch.Tensor:
    """Plain torch, in float32: gather each token's adapter and apply it row by row (batched)."""
    slot_ids = slot_ids.long()
    has_adapter = slot_ids >= 0
    safe = slot_ids.clamp(min=0)
    a = A_slots.float()[safe]  # (tokens, r, d_in)
    b = B_slots.float()[safe]  # (tokens, d_out, r)
    shrunk = torch.einsum("trk,tk->tr", a, x.float())
    delta = torch.einsum("tnr,tr->tn", b, shrunk) * scales.float()[safe][:, None]
    return (delta * has_adapter[:, None]).to(x.dtype)
