"""NF4 dequantize-on-the-fly matmul: ``y = x dequant(W)^T + bias`` for a bitsandbytes NF4 weight.

The weight stays packed as bitsandbytes stores it (``bnb.functional.quantize_4bit``): the (N, K) weight
flattened row-major, two 4-bit codes per byte (even element in the high nibble), each code an index into
the 16-value NF4 table ``quant_state.code``, and one absmax per ``quant_state.blocksize`` consecutive
elements. With double quantization (``quant_state.nested``) the absmax values are themselves 8-bit
blockwise-quantized; they are dequantized once per call here (N*K/blocksize values, small) with
``bnb.functional.dequantize_blockwise``. The kernel then loads bytes, not half-precision weights: each
(BLOCK_K x BLOCK_N) tile of ``W^T`` is unpacked, looked up in the table and scaled by its absmax in
registers, right before the ``tl.dot``. The reference is ``bnb.functional.dequantize_4bit`` + a matmul.

Backward (the base is frozen): ``dx = dy dequant(W)`` with the weight dequantized by bitsandbytes, as
bitsandbytes' own ``matmul_4bit`` does; no gradient for the weight.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from adapterhub_triton.support import dot_options

MIN_DOT = 16


@triton.jit
def _nf4_matmul_kernel(
    x_ptr, w_ptr, code_ptr, absmax_ptr, bias_ptr, y_ptr,
    M, N, K, blocksize,
    stride_xm, stride_xk, stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=(offs_m[:, None] < M) & (offs_k[None, :] < K),
            other=0.0,
        )  # (m, k)
        in_bounds = (offs_k[:, None] < K) & (offs_n[None, :] < N)
        flat = offs_n[None, :].to(tl.int64) * K + offs_k[:, None]  # (k, n): index of W[n, k] in the flat weight
        packed = tl.load(w_ptr + flat // 2, mask=in_bounds, other=0).to(tl.int32)
        nibble = tl.where(flat % 2 == 0, packed >> 4, packed & 15)
        value = tl.load(code_ptr + nibble, mask=in_bounds, other=0.0)  # NF4 table lookup, float32
        absmax = tl.load(absmax_ptr + flat // blocksize, mask=in_bounds, other=0.0)
        w_t = (value * absmax).to(x.dtype)  # (k, n), rounded to the input dtype as dequantize_4bit rounds it
        if UPCAST:
            x, w_t = x.to(tl.float32), w_t.to(tl.float32)
        acc += tl.dot(x, w_t, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    y_tile = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_tile, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def absmax_float(quant_state) -> torch.Tensor:
    """Per-block absmax in float32, undoing bitsandbytes' double quantization when it was used."""
    if not quant_state.nested:
        return quant_state.absmax.float()
    from bitsandbytes.functional import dequantize_blockwise

    return (dequantize_blockwise(quant_state.absmax, quant_state.state2) + quant_state.offset).float()


def nf4_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    quant_state,
    bias: torch.Tensor | None = None,
    *,
    block_m: int = 32,
    block_n: int = 64,
    block_k: int = 64,
) -> torch.Tensor:
    """``x dequant(W)^T + bias`` for 2-D ``x`` (M, K); ``weight`` the packed uint8 NF4 tensor (any shape)."""
    if quant_state.quant_type != "nf4":
        raise ValueError(f"nf4_matmul needs an NF4 weight, got {quant_state.quant_type!r}")
    N, K = quant_state.shape
    M = x.shape[0]
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    if M == 0 or N == 0:
        return y.zero_()
    code = quant_state.code.to(device=x.device, dtype=torch.float32).contiguous()
    absmax = absmax_float(quant_state).to(x.device).contiguous()
    size = lambda n, cap: max(MIN_DOT, min(cap, triton.next_power_of_2(n)))  # noqa: E731
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _nf4_matmul_kernel[grid](
        x, weight.reshape(-1), code, absmax, bias if bias is not None else y, y,
        M, N, K, quant_state.blocksize,
        *x.stride(), *y.stride(),
        HAS_BIAS=bias is not None,
        BLOCK_M=size(M, block_m), BLOCK_N=size(N, block_n), BLOCK_K=size(K, block_k),
        **dot_options(x.dtype, _nf4_matmul_kernel),
    )  # fmt: skip
    return y


def dequantize(weight: torch.Tensor, quant_state, dtype: torch.dtype) -> torch.Tensor:
    from bitsandbytes.functional import dequantize_4bit

    return dequantize_4bit(weight, quant_state).to(dtype)


class NF4Linear(torch.autograd.Function):
    """Autograd for the NF4 linear with a frozen quantized weight: gradients for x and bias."""

    @staticmethod
    def forward(ctx, x, weight, quant_state, bias):
        shape = x.shape
        y = nf4_matmul(x.reshape(-1, shape[-1]), weight, quant_state, bias)
        ctx.quant_state, ctx.shape = quant_state, shape
        ctx.save_for_backward(weight)
        return y.reshape(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        (weight,) = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = (
            (dy2 @ dequantize(weight, ctx.quant_state, dy.dtype)).reshape(ctx.shape)
            if ctx.needs_input_grad[0]
            else None
        )
        dbias = dy2.sum(0) if ctx.needs_input_grad[3] else None
        return dx, None, None, dbias


def nf4_linear(x: torch.Tensor, weight: torch.Tensor, quant_state, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Op ``nf4_linear``: x (..., K) -> (..., N), the NF4 weight dequantized inside the matmul."""
    return NF4Linear.apply(x, weight, quant_state, bias)


def nf4_linear_reference(
    x: torch.Tensor, weight: torch.Tensor, quant_state, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain torch: bitsandbytes dequantizes the whole weight, then one matmul."""
    return torch.nn.functional.linear(x, dequantize(weight, quant_state, x.dtype), bias)
