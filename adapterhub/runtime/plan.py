"""Turn a stored LoRA adapter (PEFT config + tensors) into what the slots need, or say why it cannot be slotted.

Called by ``AdapterPool`` when an adapter comes out of the registry, before it is cached in host memory: the
per-layer ``(A, B, scale)`` with scale ``alpha / r`` (rsLoRA: ``alpha / sqrt(r)``, per-module alpha and rank
patterns honoured exactly as peft does), plus the classification head a sequence classifier saves whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from peft.utils.other import get_pattern_key

from adapterhub import plugins

PEFT_PREFIX = "base_model.model."
_LORA_KEYS = (".lora_A.weight", ".lora_B.weight")


@dataclass
class SlotPlan:
    """One adapter, ready to copy into a slot: LoRA factors per target module and whole head weights."""

    layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # module name -> (A (r, d_in), B (d_out, r), scale)
    heads: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # head name -> {"weight", "bias"}
    max_rank: int = 0

    @property
    def nbytes(self) -> int:
        factors = sum(A.nbytes + B.nbytes for A, B, _ in self.layers.values())
        return factors + sum(t.nbytes for head in self.heads.values() for t in head.values())


class NotSlottable(Exception):
    """The adapter is valid but cannot live in a slot; the message says why (it loads through peft instead)."""


def _unsupported_config(peft_config: dict) -> str | None:
    peft_type = str(peft_config.get("peft_type", "?")).removeprefix("PeftType.")
    method = plugins.catalog().method_for_peft_type(peft_type)
    if "slottable" not in method.capabilities:
        return f"method {method.name!r} is not slottable (only LoRA-family methods are)"
    if peft_config.get("use_dora"):
        return "DoRA rescales the whole weight per column, so its delta is not a low-rank product"
    if peft_config.get("fan_in_fan_out"):
        return "fan_in_fan_out (Conv1D) weights are not supported by the slots"
    if peft_config.get("bias", "none") != "none" or peft_config.get("lora_bias"):
        return "trained biases are not part of a slot"
    return None


def plan_adapter(peft_config: dict, tensors: dict[str, torch.Tensor], *, targets: set[str], heads: set[str],
                 max_rank: int) -> SlotPlan:  # fmt: skip
    """The ``SlotPlan`` of an adapter for a pool with slotted modules ``targets`` and heads ``heads``.

    Raises ``NotSlottable`` naming the reason when the adapter must load through peft instead.
    """
    reason = _unsupported_config(peft_config)
    if reason:
        raise NotSlottable(reason)
    alpha, use_rslora = peft_config.get("lora_alpha", 8), bool(peft_config.get("use_rslora"))
    alpha_pattern = peft_config.get("alpha_pattern") or {}
    plan = SlotPlan(layers={})
    consumed = set()
    for key in tensors:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")].removeprefix(PEFT_PREFIX)
        b_key = key[: -len(".lora_A.weight")] + ".lora_B.weight"
        if module not in targets:
            raise NotSlottable(f"it adapts {module}, which is not a slotted linear layer of this pool")
        if b_key not in tensors:
            raise NotSlottable(f"it has no lora_B for {module}")
        A, B = tensors[key], tensors[b_key]
        rank = A.shape[0]
        if rank > max_rank:
            raise NotSlottable(f"its rank {rank} (at {module}) exceeds the pool's max rank {max_rank}")
        module_alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), alpha)
        scale = module_alpha / math.sqrt(rank) if use_rslora else module_alpha / rank
        plan.layers[module] = (A, B, scale)
        plan.max_rank = max(plan.max_rank, rank)
        consumed.update((key, b_key))
    for head in heads:
        weight, bias = PEFT_PREFIX + head + ".weight", PEFT_PREFIX + head + ".bias"
        if weight in tensors:
            plan.heads[head] = {"weight": tensors[weight], **({"bias": tensors[bias]} if bias in tensors else {})}
            consumed.update((weight, bias))
    leftover = sorted(set(tensors) - consumed)
    if leftover:
        raise NotSlottable(f"it has tensors the slots have no place for (e.g. {leftover[0]})")
    if not plan.layers and not plan.heads:
        raise NotSlottable("it has no LoRA tensors")
    return plan
