"""adapterhub kernel plugin: Triton kernels for LoRA, each beside a plain-torch reference.

Ops contributed through ``adapterhub_kernels()`` (the contracts of ``lora_forward`` and
``lora_gather_forward`` are those of ``adapterhub.kernels``):

* ``lora_forward(x, A, B, scale)``: one adapter for all rows, ``scale * (x A^T) B^T`` in one launch (any rank).
* ``lora_gather_forward(x, A_slots, B_slots, scales, slot_ids)``: one adapter per row of a mixed batch;
  BGMV for decode (one token per row), SGMV when rows carry a sequence (see ``bgmv`` and ``sgmv``); slot ranks
  up to ``support.MAX_GATHER_RANK``, wider pools run in torch (``gather_fits``).
* ``lora_linear(x, weight, bias, A, B, scale, x_lora)``: the fused LoRA linear with a frozen base, with
  autograd (training); the LoRA plugin (``adapterhub_lora.dispatch``) sends peft's LoRA layers through it.
* ``nf4_linear(x, weight, quant_state, bias)``: a bitsandbytes NF4 weight dequantized on the fly inside
  the matmul, differentiable in x.

Kernel modules import triton, so they are imported on first call: the plugin itself loads (and says why
its kernels cannot run) on a machine without triton or without a GPU. Neither does this module import torch
(``support`` does): every ``adapterhub --help`` imports it to look for plugin commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import adapterhub
from adapterhub.specs import KernelSpec

if TYPE_CHECKING:
    import torch

PRIORITY = 10


def supports(device, dtype) -> str | None:
    from adapterhub_triton import support

    return support.supports(device, dtype)


def gather_fits(x, A_slots, B_slots, scales, slot_ids) -> str | None:
    from adapterhub_triton import support

    return support.gather_fits(x, A_slots, B_slots, scales, slot_ids)


def nf4_fits(x, weight, quant_state, bias=None) -> str | None:
    from adapterhub_triton import support

    return support.nf4_fits(x, weight, quant_state, bias)


def lora_forward(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    from adapterhub_triton import fused_lora as kernel

    return kernel.lora_forward(x, A, B, scale)


def lora_gather_forward(
    x: torch.Tensor, A_slots: torch.Tensor, B_slots: torch.Tensor, scales: torch.Tensor, slot_ids: torch.Tensor
) -> torch.Tensor:
    """x (batch, *, d_in), slot_ids (batch,) -> delta (batch, *, d_out). A row of one token (decode) goes to
    BGMV; rows carrying a sequence are segments of ``seq`` tokens sharing an adapter and go to SGMV."""
    from adapterhub_triton.bgmv import bgmv
    from adapterhub_triton.sgmv import sgmv

    batch, d_in, d_out = x.shape[0], x.shape[-1], B_slots.shape[1]
    rows = x.reshape(-1, d_in)  # (batch * seq, d_in)
    seq = rows.shape[0] // batch if batch else 1
    if seq == 1:
        delta = bgmv(rows, A_slots, B_slots, scales, slot_ids)
    else:
        delta = sgmv(rows, A_slots, B_slots, scales, slot_ids.repeat_interleave(seq))
    return delta.reshape(*x.shape[:-1], d_out)


def lora_linear(x, weight, bias, A, B, scale, x_lora=None) -> torch.Tensor:
    from adapterhub_triton import fused_lora as kernel

    return kernel.lora_linear(x, weight, bias, A, B, scale, x_lora)


def nf4_linear(x, weight, quant_state, bias=None) -> torch.Tensor:
    from adapterhub_triton import nf4_matmul as kernel

    return kernel.nf4_linear(x, weight, quant_state, bias)


@adapterhub.hookimpl
def adapterhub_kernels() -> list[KernelSpec]:
    return [
        KernelSpec("lora_forward", "triton", lora_forward, supports, PRIORITY),
        KernelSpec("lora_gather_forward", "triton-bgmv-sgmv", lora_gather_forward, supports, PRIORITY, gather_fits),
        KernelSpec("lora_linear", "triton-fused", lora_linear, supports, PRIORITY),
        KernelSpec("nf4_linear", "triton-nf4", nf4_linear, supports, PRIORITY, nf4_fits),
    ]
