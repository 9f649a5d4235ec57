"""LoRA, rsLoRA and DoRA adapters as slot contents, so the adapter pool serves them from resident slots.

Called by the core's pool through ``MethodSpec.slot_plan`` when an adapter comes out of the registry. Per
module: the pair ``(A, B)`` with scale ``alpha / r`` (rsLoRA: ``alpha / sqrt(r)``; per-module alpha and rank
patterns honoured exactly as peft does). DoRA adds peft's weight decomposition as a per-column scale: peft
computes ``y = c * (W x + s B A x) + b`` with ``c = m / ||W + s B A||`` per output row (the norm is detached
and constant at inference), which is the slot's ``out_scale = c`` and ``out_shift = (1 - c) * b`` applied to
``base(x) + s B A x``. ``c`` is computed once here, from the pool's base weight, not in every forward.
"""

from __future__ import annotations

import math

import torch
from peft.utils.other import get_pattern_key

from adapterhub.specs import NotSlottable, SlotContents, SlotLayout

A_KEY, B_KEY, MAGNITUDE_KEY = "lora_A.weight", "lora_B.weight", "lora_magnitude_vector"
_KEYS = frozenset({A_KEY, B_KEY, MAGNITUDE_KEY})

# LoRA variants whose forward is not a low-rank delta (or column scale) of a plain linear: they load through peft.
_VARIANTS = {
    "fan_in_fan_out": "fan_in_fan_out (Conv1D) weights are not supported by the slots",
    "lora_bias": "a trained LoRA bias is not part of a slot",
    "use_qalora": "QALoRA pools its input, which the slots do not",
    "alora_invocation_tokens": "activated LoRA depends on the tokens of the request",
    "layer_replication": "layer replication changes the model's layers",
    "trainable_token_indices": "trained token embeddings are not part of a slot",
    "target_parameters": "LoRA on parameters (not modules) is not a linear layer's delta",
}


def _unsupported(peft_config: dict) -> str | None:
    for key, why in _VARIANTS.items():
        if peft_config.get(key):
            return why
    if peft_config.get("bias", "none") != "none":
        return "trained biases are not part of a slot"
    return None


def slot_plan(peft_config: dict, modules: dict[str, dict[str, torch.Tensor]],
              layout: SlotLayout) -> dict[str, SlotContents]:  # fmt: skip
    """``{module: SlotContents}`` of a stored LoRA adapter; ``NotSlottable`` naming why when it has none."""
    reason = _unsupported(peft_config)
    if reason:
        raise NotSlottable(reason)
    alpha, use_rslora = peft_config.get("lora_alpha", 8), bool(peft_config.get("use_rslora"))
    alpha_pattern = peft_config.get("alpha_pattern") or {}
    dora = bool(peft_config.get("use_dora"))
    plan = {}
    for module, tensors in modules.items():  # ~200 modules, on every registry swap: keep the loop lean
        unknown = tensors.keys() - _KEYS
        if unknown:
            raise NotSlottable(f"it has tensors the slots have no place for ({module}.{sorted(unknown)[0]})")
        A, B = tensors.get(A_KEY), tensors.get(B_KEY)
        if A is None or B is None:
            raise NotSlottable(f"it has no {B_KEY if A is not None else A_KEY} for {module}")
        rank = A.shape[0]
        module_alpha = alpha
        if alpha_pattern:
            module_alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), alpha)
        scale = module_alpha / math.sqrt(rank) if use_rslora else module_alpha / rank
        contents = SlotContents(A=A, B=B, scale=scale)
        if dora:
            if MAGNITUDE_KEY not in tensors:
                raise NotSlottable(f"it is a DoRA adapter without a magnitude for {module}")
            _add_dora_scale(contents, tensors[MAGNITUDE_KEY], layout, module)
        elif MAGNITUDE_KEY in tensors:
            raise NotSlottable(f"it has a DoRA magnitude for {module} but its config does not use DoRA")
        plan[module] = contents
    return plan


def _add_dora_scale(contents: SlotContents, magnitude: torch.Tensor, layout: SlotLayout, module: str) -> None:
    """Fill DoRA's column scale and the bias shift it needs, from the frozen weight of ``module``."""
    weight = layout.weight(module)  # (d_out, d_in) float32
    if tuple(magnitude.shape) != (weight.shape[0],):
        raise NotSlottable(f"its DoRA magnitude at {module} has shape {tuple(magnitude.shape)}, the layer has "
                           f"{weight.shape[0]} outputs")  # fmt: skip
    A, B = contents.A.float(), contents.B.float()
    norm = torch.linalg.norm(weight + contents.scale * (B @ A), dim=1)  # (d_out,), as peft's get_weight_norm
    column = magnitude.float() / norm
    contents.out_scale = column
    bias = layout.bias(module)
    contents.out_shift = torch.zeros_like(column) if bias is None else (1 - column) * bias.float()
