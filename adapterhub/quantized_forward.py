"""A quantized base's NF4 linears computed by a plugin's ``nf4_linear`` kernel, where one is chosen.

``load_base`` calls ``use_nf4_kernel(model)`` on an NF4-quantized base: when a plugin contributes an
``nf4_linear`` kernel that supports the base's device and compute dtype (``adapterhub.kernels``; Triton's
dequantizes inside the matmul on a GPU), every bitsandbytes NF4 linear gets a forward calling that op, which is
differentiable in its input. Training (peft wraps these layers as its base layers), evaluation and the adapter
pool (slots wrap them the same way) all run through it. With no such kernel (no GPU) the layers are left
exactly as bitsandbytes made them: the op's torch reference would dequantize and multiply just as their own
forward does, so there is nothing to gain from sending them to it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from adapterhub import kernels
from adapterhub.module_classes import mixed_in


class Nf4KernelLinear:
    """Mixin put in front of a bitsandbytes ``Linear4bit``: its forward through the chosen ``nf4_linear`` op."""

    nf4_op: Callable[..., torch.Tensor]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        state = getattr(self.weight, "quant_state", None)
        if args or kwargs or state is None:
            return super().forward(x, *args, **kwargs)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self.nf4_op(x, self.weight, state, bias)


def _is_nf4(module: torch.nn.Module) -> bool:
    state = getattr(getattr(module, "weight", None), "quant_state", None)
    return isinstance(module, torch.nn.Linear) and getattr(state, "quant_type", None) == "nf4"


def use_nf4_kernel(model: torch.nn.Module, compute_dtype: torch.dtype) -> kernels.KernelChoice:
    """Send every NF4 linear of ``model`` to the ``nf4_linear`` kernel chosen for its device and
    ``compute_dtype`` when a plugin contributes one; returns the choice (the torch reference: nothing changed)."""
    layers = [m for m in model.modules() if _is_nf4(m) and not isinstance(m, Nf4KernelLinear)]
    device = layers[0].weight.device if layers else torch.device("cpu")
    choice = kernels.select_kernel("nf4_linear", device, compute_dtype)
    if choice.plugin is not None:
        for module in layers:
            module.nf4_op = choice.fn
            module.__class__ = mixed_in(Nf4KernelLinear, type(module))
    return choice
