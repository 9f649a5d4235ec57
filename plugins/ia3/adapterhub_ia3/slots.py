"""IA3 adapters as slot contents, so the adapter pool serves them from resident slots beside LoRA ones.

Called by the core's pool through ``MethodSpec.slot_plan``. IA3 learns one vector per targeted linear: peft
multiplies the layer's output by it (``y = l * base(x)``, stored as ``(d_out, 1)``), or, on feed-forward
layers, the layer's input (``y = base(l * x)``, stored as ``(1, d_in)``). Those are a slot's ``out_scale`` and
``in_scale``; nothing else is needed, so an IA3 row costs one multiply per layer in a mixed batch.
"""

from __future__ import annotations

import torch

from adapterhub.specs import NotSlottable, SlotContents, SlotLayout

VECTOR_KEY = "ia3_l"


def slot_plan(peft_config: dict, modules: dict[str, dict[str, torch.Tensor]],
              layout: SlotLayout) -> dict[str, SlotContents]:  # fmt: skip
    """``{module: SlotContents}`` of a stored IA3 adapter; ``NotSlottable`` naming why when it has none."""
    if peft_config.get("fan_in_fan_out"):
        raise NotSlottable("fan_in_fan_out (Conv1D) weights are not supported by the slots")
    plan = {}
    for module, tensors in modules.items():
        if set(tensors) != {VECTOR_KEY}:
            extra = sorted(set(tensors) - {VECTOR_KEY}) or ["(no ia3_l)"]
            raise NotSlottable(f"it has tensors the slots have no place for ({module}.{extra[0]})")
        vector = tensors[VECTOR_KEY]
        d_in, d_out = layout.shapes[module]
        if tuple(vector.shape) == (1, d_in):  # feed-forward: scales the input
            plan[module] = SlotContents(in_scale=vector.reshape(d_in))
        elif tuple(vector.shape) == (d_out, 1):
            plan[module] = SlotContents(out_scale=vector.reshape(d_out))
        else:
            raise NotSlottable(f"its IA3 vector at {module} has shape {tuple(vector.shape)}; the layer takes "
                               f"(1, {d_in}) or ({d_out}, 1)")  # fmt: skip
    return plan
