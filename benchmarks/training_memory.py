"""What one training step holds in memory beyond the frozen base: the methods benchmark's memory column.

Whole-process RSS cannot tell methods apart on a CPU (the base, torch and the tokenizer dominate it, and torch's
CPU allocator keeps no statistics), so the step is accounted for tensor by tensor on the very model a side
trains, during one real forward, backward and AdamW step:

* new weights: parameters the method added to the model (adapter weights, the copy of a trained head);
* gradients of every trainable parameter, after ``backward``;
* optimizer state: every tensor ``torch.optim.AdamW`` keeps (two moments per trainable weight), after ``step``;
* activations: the tensors autograd saved for ``backward`` (``torch.autograd.graph.saved_tensors_hooks``),
  counted once per storage, leaving out storages that belong to parameters (the frozen base's own weights).

Their sum is what training with the method adds over holding the frozen base for inference. It leaves out
short-lived temporaries inside one operation, so the real peak is somewhat higher, equally for every method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

MB = 1024 * 1024


@dataclass
class StepMemory:
    """Bytes held by one training step beyond the frozen base, by kind (see the module docstring)."""

    new_weights: int
    gradients: int
    optimizer_state: int
    activations: int

    @property
    def total(self) -> int:
        return self.new_weights + self.gradients + self.optimizer_state + self.activations

    def to_mb(self) -> dict[str, float]:
        return {**{k: v / MB for k, v in asdict(self).items()}, "total": self.total / MB}


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def base_parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of ``model``'s parameters; taken before a method is attached, it is the frozen base's share."""
    return _bytes(model.parameters())


def measure_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], base_bytes: int,
                 loss_of: Callable[[torch.nn.Module, dict], torch.Tensor] | None = None) -> StepMemory:  # fmt: skip
    """Account for one forward + backward + AdamW step of ``model`` on ``batch`` (the weights then move by
    a step of learning rate 0, i.e. stay as they were; gradients are cleared afterwards)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_of(model, batch) if loss_of is not None else model(**batch).loss
    loss.backward()
    gradients = _bytes(p.grad for p in trainable if p.grad is not None)
    optimizer = torch.optim.AdamW(trainable, lr=0.0, weight_decay=0.0)
    optimizer.step()
    state = _bytes(t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    optimizer.zero_grad(set_to_none=True)
    return StepMemory(max(0, _bytes(model.parameters()) - base_bytes), gradients, state, sum(saved.values()))
