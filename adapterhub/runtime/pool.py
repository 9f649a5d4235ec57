"""The adapter pool: a fixed number of resident adapter slots on one loaded base, filled from the registry.

``AdapterPool(base)`` gives every target linear of the base (``nn.Linear`` or a bitsandbytes quantized
linear; all of them except the output head by default) its slot tensors once. Then:

* ``load(ref)``: resolve ``ref`` (``name``, ``name:tag``, ``name@3``) to its key ``name@version``, then
  registry -> xxh3 check -> base fingerprint and head shape checks -> host memory -> a device
  slot (a tensor copy). Adapters live in three tiers, each evicting least-recently-used: device slots,
  host memory (pinned on CUDA), and the registry on disk. Every adapter in memory keeps its host copy (a slot
  is refilled from it); ``host_capacity`` bounds the adapters held *besides* those in slots, so any capacity,
  0 included, works with any number of slots.
* ``activate(keys)``: one adapter key (or None for the base) per batch row; a context manager under which
  the base model's forward applies each row's slot contents. Switching adapters is changing slot indices.

Below the edge everything takes keys, never refs: a key names one immutable version, so ``activate``,
``fetch`` and ``peft_adapter`` never ask the registry what a ref means (a tag may move between two decode steps;
a key cannot). Only ``load`` and ``key_of`` resolve refs, once, where a request arrives; ``fetch`` reads the
registry only for the blob of a key that is not in host memory.

What a slot holds comes from the adapter's method plugin (``MethodSpec.slot_plan``: LoRA, rsLoRA and DoRA
as a low-rank pair with DoRA's column scales, IA3 as scaling vectors), so one batch mixes methods row by row.
Adapters whose method has no slot plan, or that it refuses (trained biases, ...), load through peft instead
(see ``fallback``); ``kind(key)`` says which way an adapter went and ``reason(key)`` why.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from adapterhub import kernels
from adapterhub.adapters import check_base
from adapterhub.base import Base
from adapterhub.errors import AdapterHubError, IncompatibleBaseError
from adapterhub.manifest import Manifest
from adapterhub.runtime.fallback import PeftAttached
from adapterhub.runtime.packed import PackedHead, PackedWeight, should_pack, unpackable, worth_packing
from adapterhub.runtime.plan import PEFT_PREFIX, PlanTemplate, SlotPlan, plan_adapter, template_key, template_of
from adapterhub.runtime.slots import ActiveRows, HeadSlots, LayerSlots, copy_all, make_slotted, own_class, remove_slots
from adapterhub.specs import NotSlottable, SlotLayout
from adapterhub_registry import AdapterRecord, InvalidNameError, Registry
from adapterhub_registry.names import parse_ref

log = logging.getLogger(__name__)
HEAD_NAMES = ("classifier", "score")  # the heads peft saves whole for sequence classification
TEMPLATES_KEPT = 1024  # plan templates a pool keeps (a few KB each), newest last


@dataclass
class PoolStats:
    """Counters for /metrics. Each model call activates every distinct adapter of its rows once: a slot hit found
    the adapter already in a device slot, a slot miss had to copy it in. They count activations, not requests."""

    slot_hits: int = 0
    slot_misses: int = 0
    swaps: int = 0  # copies into a device slot
    registry_loads: int = 0
    device_evictions: int = 0
    host_evictions: int = 0


@dataclass
class HostAdapter:
    """An adapter held in host memory: its slot plan, or (not slottable) the PEFT config and tensors."""

    key: str
    method: str
    manifest: dict
    plan: SlotPlan | None = None
    peft_config: dict = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    reason: str | None = None  # why it is not slottable

    @property
    def nbytes(self) -> int:
        if self.plan is not None:
            return self.plan.nbytes
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def kind(self) -> str:
        """``"slotted"`` (served from resident slots in mixed batches) or ``"peft"`` (swapped in through peft)."""
        return "slotted" if self.plan is not None else "peft"

    @property
    def labels(self) -> list[str] | None:
        """The class names a classifier adapter was trained with (recorded in its manifest), if any."""
        return Manifest.from_dict(self.manifest).labels or None


class AdapterPool:
    """Resident adapter slots on one base model; see the module docstring."""

    def __init__(self, base: Base, *, slots: int = 8, max_rank: int = 16, host_capacity: int = 64,
                 targets: Sequence[str] | None = None, registry: Registry | None = None,
                 pack_weights: bool | None = None) -> None:  # fmt: skip
        if slots < 1 or max_rank < 1 or host_capacity < 0:
            raise AdapterHubError(f"an adapter pool needs slots >= 1, max_rank >= 1 and host_capacity >= 0 "
                                  f"(got slots={slots}, max_rank={max_rank}, host_capacity={host_capacity})")  # fmt: skip
        self.base, self.slots, self.max_rank, self.host_capacity = base, slots, max_rank, host_capacity
        self.registry = registry or Registry()
        self.rows = ActiveRows()
        self.stats = PoolStats()
        self.peft = PeftAttached(base)
        self.device = base.model.get_input_embeddings().weight.device
        self.dtype = base.model.get_input_embeddings().weight.dtype
        self.kernels = {op: kernels.select_kernel(op, self.device, self.dtype) for op in kernels.REFERENCES}
        self.layers: dict[str, LayerSlots] = {}
        self.heads: dict[str, HeadSlots] = {}
        self.packed_head: PackedHead | None = None
        self._wrap(targets)
        self._pack(pack_weights)
        self.layout = SlotLayout(
            shapes={name: (m.in_features, m.out_features) for name, m in self._slotted_modules()},
            max_rank=max_rank, weight=self._float_weight, bias=lambda name: self.base.model.get_submodule(name).bias,
        )  # fmt: skip
        self._device: OrderedDict[str, int] = OrderedDict()  # key -> slot, least recently used first
        self._host: OrderedDict[str, HostAdapter] = OrderedDict()
        self._pinned: set[str] = set()
        self._templates: dict[str, PlanTemplate] = {}  # template_key -> the plan template of that blob and config

    # -- set-up -----------------------------------------------------------------------------------------
    def _wrap(self, targets: Sequence[str] | None) -> None:
        model = self.base.model
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        heads = {name for name in HEAD_NAMES if isinstance(getattr(model, name, None), torch.nn.Linear)}
        if self.base.model_task != "seq-cls":
            heads = set()
        for name, module in list(model.named_modules()):
            if not isinstance(module, torch.nn.Linear) or module is output:
                continue
            if name in heads:
                self.heads[name] = HeadSlots(self.rows, module, self.slots)
                make_slotted(module, self.heads[name])
            elif targets is None or any(name == t or name.endswith("." + t) for t in targets):
                self.layers[name] = LayerSlots(
                    self.rows, module.in_features, module.out_features, self.slots, self.max_rank, self.dtype,
                    self.device, self.kernels["lora_forward"], self.kernels["lora_gather_forward"],
                )  # fmt: skip
                make_slotted(module, self.layers[name])
        if not self.layers:
            raise AdapterHubError("the base has no linear layers to slot (check --targets)")

    def _pack(self, wanted: bool | None) -> None:
        """Pack the slotted layers' and the output head's weights for the CPU when ``wanted`` (None: where it pays
        and fits; packed.py). Only plain float32 ``nn.Linear`` layers on a CPU qualify."""
        model = self.base.model
        layers = {n: m for n, m in self._slotted_modules() if wanted or worth_packing(m.weight)}
        reasons = {unpackable(own_class(m), m.weight) for m in layers.values()} - {None}
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if (
            not isinstance(head, torch.nn.Linear)
            or unpackable(type(head), head.weight)
            or not (wanted or worth_packing(head.weight))
        ):
            head = None  # the head is packed where it can be, whatever the layers do
        weights = [m.weight for m in layers.values()] + ([head.weight] if head is not None else [])
        if not should_pack(weights, reasons, wanted):
            return
        for name, module in layers.items():
            self.layers[name].packed = PackedWeight(module)
        if head is not None:
            self.packed_head = PackedHead(head)
        log.info("packed %d linear weights for the CPU (%.0f MB; pack_weights=False does not)", len(weights),
                 sum(w.nbytes for w in weights) / 1e6)  # fmt: skip

    def _slotted_modules(self) -> Iterator[tuple[str, torch.nn.Module]]:
        return ((name, m) for name, m in self.base.model.named_modules() if name in self.layers)

    def _float_weight(self, name: str) -> torch.Tensor:
        """The frozen weight of slotted layer ``name`` in float32, dequantized when the base is quantized."""
        from peft.utils.integrations import dequantize_module_weight

        return dequantize_module_weight(self.base.model.get_submodule(name)).detach().float()

    def close(self) -> None:
        """Detach everything: the base model is exactly as loaded again."""
        self.peft.detach()
        if self.packed_head is not None:
            self.packed_head.detach()
            self.packed_head = None
        for name, module in self.base.model.named_modules():
            if name in self.layers or name in self.heads:
                remove_slots(module)
        self.layers.clear()
        self.heads.clear()

    @property
    def nbytes(self) -> int:
        """Bytes of the device slot tensors."""
        return sum(s.nbytes for s in self.layers.values()) + sum(h.nbytes for h in self.heads.values())

    @property
    def host_nbytes(self) -> int:
        return sum(a.nbytes for a in list(self._host.values()))  # list(): a snapshot, see describe()

    # -- loading ----------------------------------------------------------------------------------------
    def key_of(self, ref: str) -> str:
        """The exact ``name@version`` of ``ref`` (one registry look-up; none for a key already in memory). Called
        where a request arrives; everything below it takes the key."""
        if _is_key(ref) and (ref in self._host or ref in self._device):
            return ref
        return self.registry.resolve(ref).ref

    def load(self, ref: str, *, force: bool = False) -> str:
        """Make ``ref`` resident (a device slot if slottable, else host memory for peft) and return its key.

        ``ref`` is resolved against the registry, so loading ``name`` again picks up a newer version.
        An adapter trained on another base is refused (``IncompatibleBaseError`` naming both) unless ``force``.
        """
        record = self.registry.resolve(ref)
        key = record.ref
        adapter = self._fetch(key, force=force, record=record)
        if adapter.plan is not None:
            self._to_slot(key)
        return key

    def unload(self, ref: str) -> str:
        """Drop an adapter from device and host memory (it stays in the registry); returns its key.

        A bare name unloads the version of it that is loaded, which need not be the registry's newest (a version
        pushed after the load); several loaded versions of one name must be named by ``name@version``."""
        key = self.key_of(ref)
        if key not in self._host and key not in self._device:
            loaded = sorted(k for k in {*self._host, *self._device} if k.partition("@")[0] == ref)
            if len(loaded) > 1:
                raise AdapterHubError(f"{ref} has {len(loaded)} versions loaded ({', '.join(loaded)}); unload one by "
                                      "name@version")  # fmt: skip
            key = loaded[0] if loaded else key
        if key in self._pinned:
            raise AdapterHubError(f"adapter {key} is in use by the running batch; unload it after the batch")
        if key not in self._host and key not in self._device:
            raise AdapterHubError(f"adapter {key} is not loaded")
        self._free_slot(key)
        self._host.pop(key, None)
        if self.peft.key == key:
            self.peft.detach()
        return key

    def _fetch(self, key: str, *, force: bool = False, record: AdapterRecord | None = None) -> HostAdapter:
        """The host copy of ``key``, read from the registry on a miss (``record``: ``key`` already resolved)."""
        if key in self._host:
            self._host.move_to_end(key)
            return self._host[key]
        record, tensors = self.registry.load_record(record) if record is not None else self.registry.load(key)
        self.stats.registry_loads += 1
        check_base(self.base, record.base_fingerprint, key, force=force)
        self._check_heads(key, tensors)
        adapter = HostAdapter(key, record.method, record.manifest)
        try:
            adapter.plan = _to_host(self._plan(record, tensors))
        except NotSlottable as exc:
            adapter.peft_config, adapter.tensors, adapter.reason = record.peft_config, tensors, str(exc)
            log.info("adapter %s is not slottable (%s); it swaps through peft", key, exc)
        self._host[key] = adapter
        self._trim_host(keep=key)
        return adapter

    def _plan(self, record: AdapterRecord, tensors: dict[str, torch.Tensor]) -> SlotPlan:
        """The slot plan of ``record``'s ``tensors``: from the template of its blob and config when an earlier
        load made one (see ``PlanTemplate``), else from its method plugin, keeping the template for next time."""
        cache_key = template_key(record.blob_sha256, record.peft_config)
        template = self._templates.get(cache_key)
        if template is not None:
            return template.plan(tensors)
        plan = plan_adapter(record.peft_config, tensors, self.layout, set(self.heads), record.ref)
        template = template_of(plan, tensors)
        if template is not None:
            self._templates[cache_key] = template
            while len(self._templates) > TEMPLATES_KEPT:
                del self._templates[next(iter(self._templates))]
        return plan

    def _check_heads(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Refuse an adapter whose saved classification head does not fit the head slots (another number of
        labels): found at fetch time, it fails only its own request instead of the slot copy of a whole batch."""
        for name, head in self.heads.items():
            weight = tensors.get(PEFT_PREFIX + name + ".weight")
            expected = tuple(head.W.shape[1:])  # (labels, hidden)
            if weight is not None and tuple(weight.shape) != expected:
                raise IncompatibleBaseError(
                    f"adapter {key} has a {name} head for {weight.shape[0]} labels (shape {tuple(weight.shape)}), but the "
                    f"loaded base classifies into {expected[0]} labels (shape {expected}). Load the base with the adapter's "
                    f"{weight.shape[0]} labels (--labels) to serve it"
                )  # fmt: skip

    def _trim_host(self, keep: str) -> None:
        """Evict the least recently used adapters held only in host memory beyond ``host_capacity``. Never
        ``keep`` (just fetched: the caller is about to use it), one in a slot or one the running batch pinned."""
        off_slot = [k for k in self._host if k not in self._device]
        victims = [k for k in off_slot if k != keep and k not in self._pinned]
        for victim in victims[: max(0, len(off_slot) - self.host_capacity)]:
            del self._host[victim]
            self.stats.host_evictions += 1

    def _to_slot(self, key: str) -> int:
        if key in self._device:
            self._device.move_to_end(key)
            self.stats.slot_hits += 1
            return self._device[key]
        self.stats.slot_misses += 1
        plan = self._fetch(key).plan
        slot = self._free_slot_index()
        copies = []
        for name, layer in self.layers.items():
            if name in plan.layers:
                copies += layer.stage(slot, plan.layers[name])
            else:
                layer.clear(slot)
        copy_all(copies)
        for name, head in self.heads.items():
            if name in plan.heads:
                head.write(slot, plan.heads[name]["weight"], plan.heads[name].get("bias"))
            else:
                head.clear(slot)
        self._device[key] = slot
        self.stats.swaps += 1
        self._trim_host(keep=key)  # the adapter it evicted from its slot is now held in host memory only
        return slot

    def _free_slot_index(self) -> int:
        used = set(self._device.values())
        free = next((s for s in range(self.slots) if s not in used), None)
        if free is not None:
            return free
        victim = next((k for k in self._device if k not in self._pinned), None)
        if victim is None:
            raise AdapterHubError(f"all {self.slots} slots are used by the running batch; use more --slots")
        self.stats.device_evictions += 1
        return self._device.pop(victim)  # its host copy stays; the slot is overwritten next

    def _free_slot(self, key: str) -> None:
        slot = self._device.pop(key, None)
        if slot is not None:
            for layer in self.layers.values():
                layer.clear(slot)
            for head in self.heads.values():
                head.clear(slot)

    # -- running ----------------------------------------------------------------------------------------
    def fetch(self, key: str) -> HostAdapter:
        """The host copy of ``key`` (``name@version``), its blob read from the registry (integrity and base checks)
        when it is not in host memory: ``fetch(key).kind``, ``.reason`` (why it is not slottable) and ``.labels``."""
        return self._fetch(_checked_key(key))

    @contextlib.contextmanager
    def activate(self, adapters: Sequence[str | None]) -> Iterator[None]:
        """Run the base with adapter key ``adapters[i]`` on row ``i`` (None: the base alone), all slottable.

        A single-element list applies to every row. Misses are loaded (evicting the least recently used
        slot not needed by this batch). Use ``peft_adapter`` for adapters that are not slottable.
        """
        keys = [None if a is None else _checked_key(a) for a in adapters]
        distinct = {k for k in keys if k is not None}
        if len(distinct) > self.slots:
            raise AdapterHubError(f"a batch uses {len(distinct)} adapters but the pool has {self.slots} slots")
        self._pinned = distinct
        try:
            slot_of = {k: self._slot_for(k) for k in distinct}
            ids = [self.slots if k is None else slot_of[k] for k in keys]
            if distinct:
                self.rows.slot_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
                self.rows.single = ids[0] if len(set(ids)) == 1 else None
                self.rows.slots = tuple(set(ids))
                self.rows.span = max(ids) + 1
                self.rows.vectors = any(self._host[k].plan.has_vectors for k in distinct)
            with self.peft.bypassed():
                yield
        finally:
            self.rows.slot_ids, self.rows.single, self.rows.slots, self.rows.vectors = None, None, (), False
            self.rows.span = 0
            self._pinned = set()

    def _slot_for(self, key: str) -> int:
        adapter = self._fetch(key)
        if adapter.plan is None:
            raise AdapterHubError(f"adapter {key} is not slottable ({adapter.reason}); run it with peft_adapter()")
        return self._to_slot(key)

    @contextlib.contextmanager
    def peft_adapter(self, key: str) -> Iterator[torch.nn.Module]:
        """Attach a non-slottable adapter (its key) through peft (its own load path) and yield the model to run."""
        adapter = self._fetch(_checked_key(key))
        if adapter.plan is not None:
            raise AdapterHubError(f"adapter {adapter.key} is slottable; run it with activate()")
        self._pinned = {adapter.key}
        try:
            yield self.peft.attach(adapter.key, adapter.peft_config, adapter.tensors, adapter.manifest)
        finally:
            self._pinned = set()

    def describe(self) -> list[dict]:
        """Every adapter in memory: key, method, tier (``device`` slot, ``host``, or ``peft``) and slot."""
        rows = []
        # Metrics read this on the event loop while the model thread loads and evicts: list() copies the dict in
        # one C call, which no other Python thread can interleave with, where a Python loop over it could fail
        # with "OrderedDict mutated during iteration".
        for key, adapter in list(self._host.items()):
            tier = "device" if key in self._device else ("peft" if adapter.plan is None else "host")
            rows.append({"adapter": key, "method": adapter.method, "tier": tier, "slot": self._device.get(key),
                         "bytes": adapter.nbytes, "not_slottable_because": adapter.reason})  # fmt: skip
        return rows


def _is_key(ref: str) -> bool:
    try:
        return parse_ref(ref).version is not None
    except InvalidNameError:
        return False


def _checked_key(key: str) -> str:
    """``key`` if it names one version (``name@version``); else an error saying where refs are resolved."""
    if not _is_key(key):
        raise AdapterHubError(f"{key!r} is not an adapter key (name@version): the pool serves exact versions only. "
                              f"Resolve a ref once with pool.key_of({key!r}) or pool.load({key!r}) and pass the key")  # fmt: skip
    return key


def _to_host(plan: SlotPlan) -> SlotPlan:
    """Keep a plan's tensors contiguous in host memory (pinned when a GPU will copy them)."""
    pin = torch.cuda.is_available()

    def host(t: torch.Tensor) -> torch.Tensor:
        if not pin and t.device.type == "cpu" and t.is_contiguous() and not t.requires_grad:
            return t  # e.g. a view into the buffer the registry read the blob into: already a host copy
        t = t.detach().to("cpu").contiguous()
        return t.pin_memory() if pin else t

    for c in plan.layers.values():  # in place: the plan was made for this pool alone
        if c.A is not None:
            c.A, c.B = host(c.A), host(c.B)
        if c.in_scale is not None or c.out_scale is not None or c.out_shift is not None:
            vectors = (c.in_scale, c.out_scale, c.out_shift)
            c.in_scale, c.out_scale, c.out_shift = (None if t is None else host(t) for t in vectors)
    heads = {name: {k: host(t) for k, t in head.items()} for name, head in plan.heads.items()}
    return SlotPlan(plan.layers, heads)
