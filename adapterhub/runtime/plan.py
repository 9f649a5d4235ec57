"""Turn a stored adapter (PEFT config + tensors) into what the slots need, or say why it cannot be slotted.

Called by ``AdapterPool`` when an adapter comes out of the registry, before it is cached in host memory. The
core knows no method's tensor names: it sorts the adapter's tensors into the whole classification heads a
sequence classifier saves (peft's ``modules_to_save``, the same for every method) and, per slotted module, the
tensors under that module's name; the method plugin's ``slot_plan`` turns the latter into ``SlotContents``
(``adapterhub.specs``) or raises ``NotSlottable``.

The pool re-reads an adapter from the registry whenever it left host memory; ``PlanTemplate`` remembers which
stored tensor went where, so planning the same blob and config again takes a dictionary look-up per tensor
instead of the plugin's sorting and checks (a few ms of Python for the ~400 tensors of an all-linear LoRA).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

import torch

from adapterhub import plugins
from adapterhub.errors import IncompatibleBaseError
from adapterhub.specs import NotSlottable, SlotContents, SlotLayout

PEFT_PREFIX = "base_model.model."


@dataclass
class SlotPlan:
    """One adapter, ready to copy into a slot: contents per slotted module and whole head weights."""

    layers: dict[str, SlotContents]  # module name -> what this adapter puts in that layer's slot
    heads: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # head name -> {"weight", "bias"}

    @functools.cached_property
    def has_vectors(self) -> bool:
        """Whether any layer gets input or output scaling vectors (IA3, DoRA), not only a low-rank pair."""
        return any(c.in_scale is not None or c.out_scale is not None or c.out_shift is not None
                   for c in self.layers.values())  # fmt: skip

    @property
    def nbytes(self) -> int:
        layers = sum(t.nbytes for contents in self.layers.values() for t in contents.tensors())
        return layers + sum(t.nbytes for head in self.heads.values() for t in head.values())


Grouped = dict[str, dict[str, torch.Tensor]]  # module -> {what follows the module name in the key: tensor}


def _by_module(tensors: dict[str, torch.Tensor], modules: set[str]) -> tuple[Grouped, list[str]]:
    """``{module: {rest of the key: tensor}}`` for keys under a slotted module, and the keys under none."""
    grouped: Grouped = {}
    leftover = []
    for key, tensor in tensors.items():  # ~400 keys per adapter, on every registry swap: index arithmetic only
        path = key.removeprefix(PEFT_PREFIX)
        end = len(path)
        while True:  # walk up: "q_proj.<method key>.weight" is under "q_proj"
            end = path.rfind(".", 0, end)
            if end < 0:
                leftover.append(key)
                break
            if path[:end] in modules:
                grouped.setdefault(path[:end], {})[path[end + 1 :]] = tensor
                break
    return grouped, leftover


def plan_adapter(peft_config: dict, tensors: dict[str, torch.Tensor], layout: SlotLayout, heads: set[str],
                 label: str = "the adapter") -> SlotPlan:  # fmt: skip
    """The ``SlotPlan`` of adapter ``label`` for a pool with slotted layers ``layout`` and head slots ``heads``.

    Raises ``NotSlottable`` naming the reason when the adapter must load through peft instead, and
    ``IncompatibleBaseError`` when its tensors do not fit the base's layers (made for a model of another size).
    """
    peft_type = str(peft_config.get("peft_type", "?")).removeprefix("PeftType.")
    method = plugins.catalog().method_for_peft_type(peft_type)
    if method.slot_plan is None:
        raise NotSlottable(f"method {method.name!r} has no slot plan (its plugin does not make it slottable)")
    plan = SlotPlan(layers={})
    rest = dict(tensors)
    for head in heads:
        weight, bias = PEFT_PREFIX + head + ".weight", PEFT_PREFIX + head + ".bias"
        if weight in rest:
            plan.heads[head] = {"weight": rest.pop(weight), **({"bias": rest.pop(bias)} if bias in rest else {})}
    grouped, leftover = _by_module(rest, set(layout.shapes))
    if leftover:
        raise NotSlottable(f"it has tensors outside the pool's slotted linear layers (e.g. {sorted(leftover)[0]})")
    plan.layers = method.slot_plan(peft_config, grouped, layout) if grouped else {}
    if not plan.layers and not plan.heads:
        raise NotSlottable("it has no tensors for the slotted layers")
    for module, contents in plan.layers.items():
        _check_contents(module, contents, layout, label)
    return plan


def _check_contents(module: str, contents: SlotContents, layout: SlotLayout, label: str) -> None:
    """A plugin's slot contents must fit the layer: shapes are checked here once, not in every forward."""
    if module not in layout.shapes:
        raise NotSlottable(f"it adapts {module}, which is not a slotted linear layer of this pool")
    d_in, d_out = layout.shapes[module]
    A, B = contents.A, contents.B
    if (A is None) != (B is None):
        raise NotSlottable(f"it has one half of a low-rank pair at {module}")
    rank = 0 if A is None else A.shape[0]
    if rank > layout.max_rank:
        raise NotSlottable(f"its rank {rank} (at {module}) exceeds the pool's max rank {layout.max_rank}")
    for tensor, shape in ((A, (rank, d_in)), (B, (d_out, rank)), (contents.in_scale, (d_in,)),
                          (contents.out_scale, (d_out,)), (contents.out_shift, (d_out,))):  # fmt: skip
        if tensor is not None and tensor.shape != shape:
            raise IncompatibleBaseError(
                f"{label} does not fit this base: its tensors at {module} have shape {tuple(tensor.shape)} where the "
                f"base's layer takes {shape}; it was made for a model of another size. Load the base it was trained on"
            )  # fmt: skip


@dataclass(frozen=True)
class PlanTemplate:
    """Where each stored tensor of one adapter went in its ``SlotPlan``, by tensor name, for plain low-rank
    pairs and whole heads (the parts that are stored tensors as they are).

    Valid for the same blob (content-addressed: the same sha256 is the same names, shapes and values), the same
    PEFT config and the same pool, which is how the pool keys it (``template_key``); the plan it gives is the one
    the plugin gave, its checks included, as ``template_of`` only accepts plans whose every tensor it can name.
    """

    layers: tuple[tuple[str, str, str, float], ...]  # (module, A key, B key, scale)
    heads: tuple[tuple[str, str, str | None], ...]  # (head, weight key, bias key or None)

    def plan(self, tensors: dict[str, torch.Tensor]) -> SlotPlan:
        """The ``SlotPlan`` of ``tensors`` (a load of the blob this template was made from)."""
        layers = {module: SlotContents(A=tensors[a], B=tensors[b], scale=scale) for module, a, b, scale in self.layers}
        heads = {head: {"weight": tensors[w], **({"bias": tensors[b]} if b else {})} for head, w, b in self.heads}
        return SlotPlan(layers, heads)


def template_key(blob_sha256: str, peft_config: dict) -> str:
    """What a ``PlanTemplate`` is valid for within one pool: the blob's content and the config read with it."""
    return blob_sha256 + json.dumps(peft_config, sort_keys=True, default=str)


def template_of(plan: SlotPlan, tensors: dict[str, torch.Tensor]) -> PlanTemplate | None:
    """The template re-making ``plan`` from a later load's ``tensors``, or None when some part of it is not a
    stored tensor as it is (DoRA's column scales and IA3's vectors are computed or reshaped: planned every time)."""
    names = {id(tensor): name for name, tensor in tensors.items()}
    layers = []
    for module, contents in plan.layers.items():
        if contents.in_scale is not None or contents.out_scale is not None or contents.out_shift is not None:
            return None
        a, b = names.get(id(contents.A)), names.get(id(contents.B))
        if a is None or b is None:
            return None
        layers.append((module, a, b, contents.scale))
    heads = []
    for head, parts in plan.heads.items():
        weight, bias = names.get(id(parts["weight"])), names.get(id(parts["bias"])) if "bias" in parts else None
        if weight is None or ("bias" in parts and bias is None):
            return None
        heads.append((head, weight, bias))
    return PlanTemplate(tuple(layers), tuple(heads))
