"""Where the Triton kernels can run: the ``supports(device, dtype)`` check behind every ``KernelSpec``, and the
per-call ``fits`` checks of the kernels that cannot take every shape.

Triton compiles for CUDA GPUs; on a CPU it can only run through its interpreter (``TRITON_INTERPRET=1``,
numpy underneath: correct but slow, meant for tests). Anything else gets a reason, which ``adapterhub
plugins`` shows and which makes the core fall back to the plain-torch op.
"""

from __future__ import annotations

import importlib.util
import os

import torch

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_GATHER_RANK = 128  # BGMV/SGMV hold a slot's whole rank in one register tile; wider pools run in torch
MIN_CAPABILITY = (7, 0)  # Volta: the oldest GPU Triton's tl.dot compiles for
BF16_CAPABILITY = (8, 0)  # Ampere: bf16 tensor cores


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (read by ``triton.jit`` when a kernel is defined)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_missing() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    return None


def supports(device, dtype) -> str | None:
    """None when the Triton kernels can run on ``device`` for ``dtype``, else the reason they cannot."""
    if (reason := triton_missing()) is not None:
        return reason
    dtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype).removeprefix("torch."))
    if dtype not in DTYPES:
        return f"dtype {dtype} is not supported (float16, bfloat16, float32)"
    device = torch.device(device)
    if device.type == "cpu":
        if interpreting():
            return None
        return "no CUDA device (set TRITON_INTERPRET=1 to run the interpreter)"
    if device.type != "cuda":
        return f"device type {device.type!r} is not supported (CUDA, or CPU with TRITON_INTERPRET=1)"
    if interpreting():
        return "TRITON_INTERPRET=1 runs kernels on the CPU only; unset it to use the GPU"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return f"GPU compute capability {capability} is below {MIN_CAPABILITY}"
    if dtype == torch.bfloat16 and capability < BF16_CAPABILITY:
        return f"bfloat16 needs compute capability {BF16_CAPABILITY} or newer (this GPU: {capability})"
    return None


def gather_fits(x, A_slots, B_slots, scales, slot_ids) -> str | None:
    """Per-call shape check of ``lora_gather_forward``: the pool's padded rank must fit the kernels' rank tile."""
    r_max = A_slots.shape[1]
    if r_max > MAX_GATHER_RANK:
        return f"slot rank {r_max} is above the {MAX_GATHER_RANK} the BGMV/SGMV tiles hold"
    return None


def nf4_fits(x, weight, quant_state, bias=None) -> str | None:
    """Per-call check of ``nf4_linear``: the kernel decodes the NF4 table only (bitsandbytes' FP4 runs in torch)."""
    quant_type = getattr(quant_state, "quant_type", None)
    return None if quant_type == "nf4" else f"the weight is {quant_type!r}-quantized; the kernel decodes nf4 only"


def dot_options(dtype: torch.dtype, kernel) -> dict:
    """Constexpr arguments for ``kernel`` if it uses ``tl.dot``: exact float32 products (no TF32) for float32
    inputs, and bfloat16 tiles upcast to float32 when the kernel is interpreted (the interpreter's ``tl.dot``
    mis-multiplies bfloat16)."""
    from triton.runtime.interpreter import InterpretedFunction

    upcast = dtype == torch.bfloat16 and isinstance(kernel, InterpretedFunction)
    return {"PRECISION": "ieee" if dtype == torch.float32 or upcast else "tf32", "UPCAST": upcast}
