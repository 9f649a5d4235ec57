"""Dispatch peft's LoRA ``Linear`` layers to a fused ``lora_linear`` kernel, for training and inference.

The LoRA method's ``MethodSpec.dispatch``, called by ``adapters.attach`` after peft has wrapped the base:
``dispatch_fused_lora(model)`` asks the core for the ``lora_linear`` kernel chosen for the base's device and
dtype (``adapterhub.kernels``); when a plugin contributes one, ``patch_lora_model(model, op, supports)`` gives
every ``peft.tuners.lora.layer.Linear`` in ``model`` an instance-level
``forward`` that computes ``base(x) + scale * lora_B(lora_A(dropout(x)))`` as one
``op(x, W, bias, A, B, scale, x_lora)`` call whenever the layer is in the plain case the op covers, and
calls peft's own forward otherwise, per call:

* exactly one active adapter, vanilla LoRA (no DoRA or other variant), no LoRA bias, not merged, adapters
  enabled, no ``adapter_names`` (peft's mixed batch) or extra arguments;
* a frozen ``torch.nn.Linear`` base without hooks of its own (quantized bases keep peft's path);
* ``supports(x.device, x.dtype)`` is None and ``x`` has the base weight's dtype.

Adapter weights kept in float32 beside a half-precision base (peft's default ``autocast_adapter_dtype``) are
cast to the input dtype on the way in; their gradients come back in float32 through that cast. Dropout
runs in torch, and its output is the op's ``x_lora``. ``unpatch_lora_model`` restores peft's forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from adapterhub import kernels

_MARK = "_adapterhub_lora_linear_op"


def _fusable(layer, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
    """The one active adapter when this call can go through the fused op, else None."""
    if args or kwargs or layer.disable_adapters or layer.merged:
        return None
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1 or active[0] in getattr(layer, "lora_variant", {}):
        return None
    name = active[0]
    base, lora_B = layer.base_layer, layer.lora_B[name]
    if type(base) is not torch.nn.Linear or base._forward_hooks or base._forward_pre_hooks:
        return None
    if base.weight.requires_grad or base.weight.dtype != x.dtype or lora_B.bias is not None:
        return None
    return name


def _dispatched_forward(layer, op: Callable, supports: Callable, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = _fusable(layer, x, args, kwargs)
    if name is None or supports(x.device, x.dtype) is not None:
        return type(layer).forward(layer, x, *args, **kwargs)
    base, dropout = layer.base_layer, layer.lora_dropout[name]
    A = layer.lora_A[name].weight.to(x.dtype)  # (r, d_in)
    B = layer.lora_B[name].weight.to(x.dtype)  # (d_out, r)
    x_lora = None if isinstance(dropout, torch.nn.Identity) or not dropout.training else dropout(x)
    return op(x, base.weight, base.bias, A, B, layer.scaling[name], x_lora)


def patch_lora_model(model: torch.nn.Module, op: Callable, supports: Callable) -> int:
    """Route every peft LoRA ``Linear`` of ``model`` through ``op`` where ``supports`` allows; returns the count."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    count = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.forward = functools.partial(_dispatched_forward, module, op, supports)
            setattr(module, _MARK, op)
            count += 1
    return count


def unpatch_lora_model(model: torch.nn.Module) -> int:
    """Give every dispatched layer peft's own forward back; returns how many were dispatched."""
    count = 0
    for module in model.modules():
        if hasattr(module, _MARK):
            del module.forward
            delattr(module, _MARK)
            count += 1
    return count


def dispatch_fused_lora(model: torch.nn.Module) -> kernels.KernelChoice:
    """Send ``model``'s LoRA layers to the chosen ``lora_linear`` kernel when a plugin offers one for the
    base's device and dtype; with none (e.g. no GPU) peft's own forward stays. Returns the choice made."""
    weight = next(p for p in model.parameters() if not p.requires_grad)
    choice = kernels.select_kernel("lora_linear", weight.device, weight.dtype)
    if choice.plugin is not None:

        def supports(device: torch.device, dtype: torch.dtype) -> str | None:
            same = device.type == weight.device.type and dtype == weight.dtype
            return None if same else f"the kernel was chosen for {weight.device.type}/{weight.dtype}"

        patch_lora_model(model, choice.fn, supports)
    return choice
