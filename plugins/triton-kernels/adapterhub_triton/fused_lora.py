"""Fused LoRA linear, forward and backward: ``y = x W^T + b + s * (x_l A^T) B^T`` in one launch.

Shapes: x (M, K), W (N, K) frozen, bias (N,) or None, A (r, K), B (N, r), s a float; ``x_l`` is the input
of the LoRA branch: ``x`` itself, or ``dropout(x)`` while training with dropout.

Forward: one program per (BLOCK_M x BLOCK_N) output tile runs the base GEMM's K loop and, on the same
loaded x tiles, the shrink ``xa = x A^T`` (M, r); the epilogue adds ``s * xa B^T`` and the bias before the
single store. Against the unfused path (peft: base output, then ``lora_A``, ``lora_B``, a scale and an add,
each a pass over an (M, N) or (M, K) tensor) the LoRA branch costs r/BLOCK_N extra FLOPs and no extra
pass over memory. When ``x_l`` is not ``x`` (dropout), ``xa`` is computed beforehand and loaded instead.
The program of the first column block also stores ``xa``: the backward needs it.

Any rank: the in-kernel shrink holds all of ``xa``'s ``r`` columns in one (BLOCK_M x BLOCK_R) register tile, so
it runs for ``r <= MAX_SHRINK_RANK``; above that ``xa`` is one torch matmul beforehand and the epilogue walks
the rank in BLOCK_R chunks (``acc += xa[:, r0:r0+BLOCK_R] B[:, r0:r0+BLOCK_R]^T``), which is also how every
given ``xa`` (dropout, backward) is consumed. Ranks, rows and columns need not be multiples of any block.

Backward (W frozen, so no dW): ``dxa = s * dy B``, ``dB = s * dy^T xa``, ``dA = dxa^T x_l`` are thin torch
matmuls; ``dx = dy W + dxa A`` is the same kernel again (base GEMM with a rank-r epilogue) on ``W^T`` and
``A^T`` as strided views. ``lora_forward`` is the kernel with no base: ``s * (x A^T) B^T``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from adapterhub_triton.support import dot_options

MIN_DOT = 16  # tl.dot needs every dimension >= 16
MAX_SHRINK_RANK = 64  # largest rank whose shrink ``x A^T`` is accumulated in registers inside the kernel
RANK_CHUNK = 32  # BLOCK_R of the chunked epilogue that consumes a given ``xa``


@triton.jit
def _fused_lora_kernel(
    x_ptr, w_ptr, bias_ptr, a_ptr, b_ptr, xa_ptr, y_ptr,
    M, N, K, R, scale,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ar, stride_ak,
    stride_bn, stride_br, stride_xam, stride_xar, stride_ym, stride_yn,
    HAS_BASE: tl.constexpr, HAS_BIAS: tl.constexpr, XA_GIVEN: tl.constexpr, STORE_XA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(1)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    acc = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)  # (m, n) = x W^T
    xa = tl.full([BLOCK_M, BLOCK_R], 0.0, tl.float32)  # (m, r) = x A^T
    if HAS_BASE or not XA_GIVEN:
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(
                x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                mask=(offs_m[:, None] < M) & (offs_k[None, :] < K),
                other=0.0,
            )  # (m, k)
            if UPCAST:
                x = x.to(tl.float32)
            if HAS_BASE:
                w_t = tl.load(
                    w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                    mask=(offs_k[:, None] < K) & (offs_n[None, :] < N),
                    other=0.0,
                )  # (k, n)
                if UPCAST:
                    w_t = w_t.to(tl.float32)
                acc += tl.dot(x, w_t, input_precision=PRECISION)
            if not XA_GIVEN:
                a_t = tl.load(
                    a_ptr + offs_k[:, None] * stride_ak + offs_r[None, :] * stride_ar,
                    mask=(offs_k[:, None] < K) & (offs_r[None, :] < R),
                    other=0.0,
                )  # (k, r)
                if UPCAST:
                    a_t = a_t.to(tl.float32)
                xa += tl.dot(x, a_t, input_precision=PRECISION)

    if XA_GIVEN:  # the rank in chunks: xa (m, r0:r0+BLOCK_R) times B^T (r0:r0+BLOCK_R, n)
        for r0 in range(0, R, BLOCK_R):
            offs_rc = r0 + offs_r
            xa_c = tl.load(
                xa_ptr + offs_m[:, None] * stride_xam + offs_rc[None, :] * stride_xar,
                mask=(offs_m[:, None] < M) & (offs_rc[None, :] < R),
                other=0.0,
            )  # (m, r), already in the input dtype
            b_t = tl.load(
                b_ptr + offs_rc[:, None] * stride_br + offs_n[None, :] * stride_bn,
                mask=(offs_rc[:, None] < R) & (offs_n[None, :] < N),
                other=0.0,
            )  # (r, n)
            xa_c = xa_c.to(b_t.dtype)
            if UPCAST:
                xa_c, b_t = xa_c.to(tl.float32), b_t.to(tl.float32)
            acc += tl.dot(xa_c, b_t, input_precision=PRECISION) * scale
    else:  # BLOCK_R >= R: the whole shrink is in registers
        if STORE_XA:
            if pid_n == 0:
                tl.store(
                    xa_ptr + offs_m[:, None] * stride_xam + offs_r[None, :] * stride_xar,
                    xa.to(xa_ptr.dtype.element_ty),
                    mask=(offs_m[:, None] < M) & (offs_r[None, :] < R),
                )
        b_t = tl.load(
            b_ptr + offs_r[:, None] * stride_br + offs_n[None, :] * stride_bn,
            mask=(offs_r[:, None] < R) & (offs_n[None, :] < N),
            other=0.0,
        )  # (r, n)
        low = xa.to(b_t.dtype)  # rounded to the input dtype, as the unfused matmuls round it
        if UPCAST:
            low, b_t = low.to(tl.float32), b_t.to(tl.float32)
        acc += tl.dot(low, b_t, input_precision=PRECISION) * scale
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    y_tile = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_tile, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def _block(size: int, cap: int) -> int:
    return max(MIN_DOT, min(cap, triton.next_power_of_2(size)))


def fused_lora_matmul(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    A: torch.Tensor,
    B: torch.Tensor,
    scale: float,
    xa: torch.Tensor | None = None,
    *,
    store_xa: bool = False,
    block_m: int = 64,
    block_n: int = 64,
    block_k: int = 32,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x W^T + bias + scale * xa B^T, xa)`` for 2-D ``x``, with ``xa = x A^T`` computed in the kernel unless
    given; ``weight=None`` leaves out the base. Any strides (``W.t()`` views are fine); one dtype throughout."""
    M, K = x.shape
    N, R = B.shape
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    if M == 0 or N == 0:
        return y.zero_(), (x @ A.t() if store_xa and xa is None else xa)
    if xa is None and R > MAX_SHRINK_RANK:
        xa = x @ A.t()  # (M, r): too wide for the kernel's register tile; the epilogue walks it in chunks
    keep_xa = store_xa and xa is None  # the kernel computes xa and stores it for the backward
    xa_out = torch.empty(M, R, device=x.device, dtype=x.dtype) if keep_xa else None
    xa_arg = xa if xa is not None else (xa_out if keep_xa else y)  # y: a placeholder pointer, never read
    w = weight if weight is not None else x
    block_r = _block(R, RANK_CHUNK) if xa is not None else max(MIN_DOT, triton.next_power_of_2(R))
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _fused_lora_kernel[grid](
        x, w, bias if bias is not None else y, A, B, xa_arg, y,
        M, N, K, R, float(scale),
        *x.stride(), *w.stride(), *A.stride(), *B.stride(), *xa_arg.stride()[-2:], *y.stride(),
        HAS_BASE=weight is not None, HAS_BIAS=bias is not None, XA_GIVEN=xa is not None, STORE_XA=keep_xa,
        BLOCK_M=_block(M, block_m), BLOCK_N=_block(N, block_n), BLOCK_K=_block(K, block_k),
        BLOCK_R=block_r, **dot_options(x.dtype, _fused_lora_kernel),
    )  # fmt: skip
    return y, xa_out if keep_xa else xa


class FusedLoraLinear(torch.autograd.Function):
    """Autograd for the fused LoRA linear with a frozen base: gradients for x, x_lora, A, B and bias."""

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, scale, x_lora):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (M, K)
        if x_lora is None:
            y, xa = fused_lora_matmul(x2, weight, bias, A, B, scale, store_xa=True)
            saved_x = x2
        else:
            saved_x = x_lora.reshape(-1, shape[-1])
            xa = saved_x @ A.t()  # (M, r)
            y, _ = fused_lora_matmul(x2, weight, bias, A, B, scale, xa)
        ctx.scale, ctx.separate_lora_input, ctx.shape = scale, x_lora is not None, shape
        ctx.save_for_backward(saved_x, weight, A, B, xa)
        return y.reshape(*shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        saved_x, weight, A, B, xa = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1]).contiguous()  # (M, N)
        dxa = (dy2 @ B) * ctx.scale  # (M, r)
        dB = (dy2.t() @ xa) * ctx.scale if ctx.needs_input_grad[4] else None  # (N, r)
        dA = dxa.t() @ saved_x if ctx.needs_input_grad[3] else None  # (r, K)
        dbias = dy2.sum(0) if ctx.needs_input_grad[2] else None
        dx = dx_lora = None
        if ctx.separate_lora_input:
            if ctx.needs_input_grad[0]:
                dx = (dy2 @ weight).reshape(ctx.shape)
            if ctx.needs_input_grad[6]:
                dx_lora = (dxa @ A).reshape(ctx.shape)
        elif ctx.needs_input_grad[0]:
            dx, _ = fused_lora_matmul(dy2, weight.t(), None, B.new_empty(0, 0), A.t(), 1.0, dxa)
            dx = dx.reshape(ctx.shape)
        return dx, None, dbias, dA, dB, None, dx_lora


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    A: torch.Tensor,
    B: torch.Tensor,
    scale: float,
    x_lora: torch.Tensor | None = None,
) -> torch.Tensor:
    """Op ``lora_linear``: ``x W^T + bias + scale * (x_lora A^T) B^T`` (x_lora defaults to x), differentiable
    in x, x_lora, A, B and bias; ``weight`` is the frozen base and gets no gradient. x: (..., K)."""
    if weight.requires_grad:
        raise ValueError("lora_linear fuses a frozen base: weight must not require grad")
    return FusedLoraLinear.apply(x, weight, bias, A, B, float(scale), x_lora)


def lora_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    A: torch.Tensor,
    B: torch.Tensor,
    scale: float,
    x_lora: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain torch: what peft's LoRA ``Linear.forward`` computes."""
    lora_input = x if x_lora is None else x_lora
    return torch.nn.functional.linear(x, weight, bias) + torch.nn.functional.linear(lora_input @ A.t(), B) * scale


def lora_forward(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """Op ``lora_forward`` of ``adapterhub.kernels``: ``scale * (x A^T) B^T`` for x (..., d_in), one launch."""
    rows = x.reshape(-1, x.shape[-1])
    delta, _ = fused_lora_matmul(rows, None, None, A, B, scale)
    return delta.reshape(*x.shape[:-1], B.shape[0])
