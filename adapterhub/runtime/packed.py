"""oneDNN-packed copies of a frozen base's linear weights: the matmuls of a CPU decode step at about twice the speed.

A decode step multiplies a few rows by every weight of the model. On a CPU, torch's ``nn.Linear`` (MKL's sgemm on
the weight as stored, ``(d_out, d_in)``) runs such skinny products far below the machine's rate: on this project's
2-core EPYC, 16 x 576 by SmolLM2's 1536 x 576 gate projection took 412 µs, 53 GFLOP/s, while oneDNN on the same
weight reordered once into its own blocked layout (``torch.ops.mkldnn._reorder_linear_weight``, what inductor does
for a frozen CPU model) took 200 µs, and 153 against 308 µs at one row (docs/serving.md, "Packed weights"). So a
pool packs the weights it serves from once, and its linears multiply through the packed copy.

The packed copy is a second copy of those weights: ``AdapterPool(pack_weights=None)`` packs only float32 ``nn.Linear``
weights on a CPU, only those of at least ``WORTH_PACKING`` elements (oneDNN's per-call cost exceeds its gain below:
measured at 16 rows, 192 x 192 broke even, 64 x 64 took 18 µs packed against 9), and only when the copies fit in
half the memory the machine has free; ``True`` packs every one it can, ``False`` none (``adapterhub serve
--pack-weights auto|on|off``). The original weights stay as they were, so peft, state dicts
and training see the model unchanged. A weight changed in place after packing (its ``_version`` moved) is packed
again before its next use; a forward that needs gradients uses the original weight.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)
WORTH_PACKING = 256 * 256  # elements of the smallest weight auto packs


def worth_packing(weight: torch.Tensor) -> bool:
    """Whether auto packing takes ``weight``: big enough that oneDNN's product beats ``nn.Linear``'s."""
    return weight.numel() >= WORTH_PACKING


def unpackable(cls: type, weight: torch.Tensor) -> str | None:
    """Why a linear of class ``cls`` (its own class, not a slotted one) with ``weight`` cannot be packed, or None."""
    if cls is not torch.nn.Linear:
        return f"{cls.__name__} is not a plain nn.Linear"
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return f"its weight is {weight.dtype} on {weight.device.type} (packing is for float32 on a CPU)"
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return "this torch has no oneDNN (mkldnn) build"
    return None


class PackedWeight:
    """One linear's weight in oneDNN's blocked layout, and the version of the weight it was packed from."""

    def __init__(self, module: torch.nn.Linear) -> None:
        self.weight = module.weight
        self._pack()

    def _pack(self) -> None:
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), None)
        self.version = self.weight._version

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
        """``x @ W.T + bias`` through the packed weight, or None where the caller must use the original: a forward
        that records gradients, or an input that is not float32 on the CPU."""
        if x.dtype != torch.float32 or x.device.type != "cpu":
            return None
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return None
        if self.weight._version != self.version:  # changed in place since it was packed
            self._pack()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, bias, "none", [], "")


def should_pack(weights: list[torch.Tensor], reasons: set[str], wanted: bool | None) -> bool:
    """Whether to pack ``weights``, which cannot be packed for ``reasons`` (empty: they can): ``wanted`` when it is
    set; else (auto) when they can and their copies fit in half the memory free now (Linux; elsewhere auto packs
    nothing)."""
    if wanted is False or not weights:
        return False
    if reasons:
        if wanted:
            log.warning("not packing the base's weights: %s", "; ".join(sorted(reasons)))
        return False
    if wanted:
        return True
    needed = sum(w.nbytes for w in weights)
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return False
    if needed > free / 2:
        log.info("not packing the base's weights: %.0f MB would take over half the %.0f MB free "
                 "(pack_weights=True insists)", needed / 1e6, free / 1e6)  # fmt: skip
        return False
    return True


class PackedHead:
    """The output head's forward through its packed weight, set on the module itself (``module.forward``) and
    removed by ``detach``: the head is not slotted, so it has no slotted forward to call the packed one from."""

    def __init__(self, module: torch.nn.Linear) -> None:
        self.module, self.weight = module, PackedWeight(module)
        self._forward = module.forward
        module.forward = self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.weight.linear(x, self.module.bias)
        return self._forward(x) if out is None else out

    def detach(self) -> None:
        if self.module.__dict__.get("forward") is self:
            del self.module.forward
