"""bitsandbytes' own NF4 forward, kept in float32, as the reference our NF4 paths are compared with.

bitsandbytes 0.50 on a CPU with AVX512-BF16 repacks an eval-mode ``Linear4bit`` weight on its first forward and then
runs its fused CPU ``gemv_4bit``, which casts the input and the block scales to bfloat16 whatever the compute dtype
(about 0.4 % per layer, 4.8e-4 on the tiny llama's logits). That is bitsandbytes' choice of kernel on that CPU, not
the arithmetic NF4 defines; the layer's ``support_avx512bf16_for_cpu`` switch turns it off, so the reference is the
same on every CPU (float32: our paths then agree to 4e-7).
"""

from __future__ import annotations

import torch


def bitsandbytes_in_float32(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every bitsandbytes 4-bit linear kept off the bfloat16 CPU kernel; refuses a model with none."""
    from bitsandbytes.nn import Linear4bit

    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert layers, "no bitsandbytes 4-bit linear in the model"
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return model
