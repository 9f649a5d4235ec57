"""Named ops of the runtime, their plain-torch references, and the choice among plugin kernels.

The runtime (``adapterhub.runtime``) never calls a kernel directly: it asks ``select_kernel(op, device, dtype)``
once per pool, and calls what comes back. A plugin contributes a faster implementation of an op with a
``KernelSpec`` from its ``adapterhub_kernels()`` hook; the highest-priority spec whose ``supports(device, dtype)``
returns None is chosen, else the torch reference below. A chosen kernel is still asked per call whether it
``fits`` the call's shapes (a rank wider than its tiles, say); a call it does not fit runs the torch reference.
A chosen kernel that raises is reported once as a warning and the torch reference takes over for that
(op, device, dtype) from then on.

The ops (exact contract a plugin kernel must follow; every tensor is on one device):

``lora_forward(x, A, B, scale) -> delta``
    One adapter for every row. ``x``: (..., d_in); ``A``: (r, d_in); ``B``: (d_out, r), possibly a
    non-contiguous view (a rank slice of a padded slot); ``scale``: a Python float.
    Returns ``delta``: (..., d_out) = ``scale * (x @ A.T) @ B.T`` in ``x``'s dtype.

``lora_gather_forward(x, A_slots, B_slots, scales, slot_ids) -> delta``
    One adapter per row, BGMV style. ``x``: (batch, *, d_in) (``*`` is the sequence, or nothing);
    ``A_slots``: (slots, r_max, d_in); ``B_slots``: (slots, d_out, r_max), possibly a non-contiguous view (the
    pool stores B transposed, ``(slots, r_max, d_out)``, and passes that storage's transposed view), ranks below
    ``r_max`` zero-padded; ``scales``: (slots,) float; ``slot_ids``: (batch,) int64, each in ``[0, slots)``
    (the pool maps "no adapter" to a slot of zeros, so no masking is needed).
    Returns ``delta``: (batch, *, d_out) with ``delta[b] = scales[s] * (x[b] @ A_slots[s].T) @ B_slots[s].T``
    for ``s = slot_ids[b]``, in ``x``'s dtype.

``lora_linear(x, weight, bias, A, B, scale, x_lora=None) -> y``
    A frozen linear plus one LoRA, differentiable in ``x``, ``A`` and ``B`` (training):
    ``y = x @ weight.T + bias + scale * (x_lora @ A.T) @ B.T`` where ``x_lora`` (x after LoRA dropout)
    defaults to ``x``. the LoRA plugin sends peft's LoRA layers to it (``adapterhub_lora.dispatch``).

``nf4_linear(x, weight, quant_state, bias=None) -> y``
    ``x @ dequantize_4bit(weight, quant_state).T + bias`` for a bitsandbytes NF4 weight, differentiable in ``x``.
    ``load_base`` sends an NF4 base's linears to it when a plugin kernel is chosen (``quantized_forward``), so
    training, evaluation and the adapter pool over that base all use it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from adapterhub import plugins
from adapterhub.specs import KernelSpec

log = logging.getLogger(__name__)


def lora_forward(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """Torch reference of ``lora_forward`` (see the module docstring for shapes)."""
    hidden = torch.nn.functional.linear(x, A) * scale  # (..., r): scale the small tensor, not the output
    return torch.nn.functional.linear(hidden, B)  # (..., d_out)


ALL_SLOTS_TOKENS = 64  # tokens per row x slots up to which lora_gather_forward's reference runs every slot at once


def lora_gather_forward(
    x: torch.Tensor, A_slots: torch.Tensor, B_slots: torch.Tensor, scales: torch.Tensor, slot_ids: torch.Tensor
) -> torch.Tensor:
    """Torch reference of ``lora_gather_forward``: every slot at once (``_all_slots_forward``) for rows of a few
    tokens (decode steps) when that costs at most the base product and the slots' storage allows it without a copy;
    else each row's A/B gathered, whose copies a row of many tokens (a prefill) amortizes."""
    slots, r_max, d_in = A_slots.shape
    batch = x.shape[0]
    tokens_per_row = x.numel() // (batch * d_in) if batch else 0
    B_rows = B_slots.transpose(1, 2)  # (slots, r_max, d_out): the runtime stores B this way (LayerSlots)
    # Measured on SmolLM2's shapes (docs/kernels.md): at 1 token per row the all-slots form took half the gather's
    # time; at 32 (8 rows of a prefill) a mixed batch took 1.25x one adapter's time with it, 0.94x with the gather.
    if (
        tokens_per_row * slots <= ALL_SLOTS_TOKENS
        and slots * r_max <= d_in
        and A_slots.is_contiguous()
        and B_rows.is_contiguous()
    ):
        return _all_slots_forward(x, A_slots, B_rows, scales, slot_ids)
    rows = x.reshape(batch, -1, d_in)  # (batch, seq, d_in)
    A = A_slots.index_select(0, slot_ids)  # (batch, r_max, d_in)
    B = B_slots.index_select(0, slot_ids)  # (batch, d_out, r_max)
    hidden = torch.bmm(rows, A.transpose(1, 2))  # (batch, seq, r_max)
    hidden = hidden * scales.index_select(0, slot_ids).to(hidden.dtype)[:, None, None]
    delta = torch.bmm(hidden, B.transpose(1, 2))  # (batch, seq, d_out)
    return delta.reshape(*x.shape[:-1], B_slots.shape[1])


def _all_slots_forward(
    x: torch.Tensor, A_slots: torch.Tensor, B_rows: torch.Tensor, scales: torch.Tensor, slot_ids: torch.Tensor
) -> torch.Tensor:
    """One product against every slot's A (``A_slots`` viewed as ``(slots * r_max, d_in)``), each row keeping only
    its own slot's block (times its scale: a scaled one-hot), and one product against every slot's B (``B_rows``,
    ``(slots, r_max, d_out)`` contiguous, viewed as ``(slots * r_max, d_out)``). Two dense matmuls per layer and no
    copy of any adapter: gathering each row's whole A and B (``index_select``) copied 313 MB per 16-row SmolLM2 decode
    step and cost twice as much (docs/kernels.md). The extra work, the other slots' blocks, is bounded by the
    caller's ``slots * r_max <= d_in``: at most the base product's."""
    slots, r_max, d_in = A_slots.shape
    batch, d_out = x.shape[0], B_rows.shape[2]
    hidden = torch.nn.functional.linear(x.reshape(batch, -1, d_in), A_slots.view(slots * r_max, d_in))
    keep = _one_hot(slot_ids, slots, hidden.dtype) * scales.to(hidden.dtype)  # (batch, slots)
    hidden = (hidden.view(batch, -1, slots, r_max) * keep[:, None, :, None]).view(batch, -1, slots * r_max)
    delta = torch.matmul(hidden, B_rows.view(slots * r_max, d_out))  # (batch, seq, d_out)
    return delta.reshape(*x.shape[:-1], d_out)


_last_one_hot: tuple[torch.Tensor, int, torch.dtype, torch.Tensor] | None = None


def _one_hot(slot_ids: torch.Tensor, slots: int, dtype: torch.dtype) -> torch.Tensor:
    """``slot_ids`` one-hot, as ``dtype``; the last one is kept, since every layer of one forward passes the very same
    ``slot_ids`` tensor (the pool's ``ActiveRows``) and building it anew took 3 ms of a 16-row SmolLM2 decode step."""
    global _last_one_hot
    last = _last_one_hot
    if last is not None and last[0] is slot_ids and last[1] == slots and last[2] == dtype:
        return last[3]
    made = torch.nn.functional.one_hot(slot_ids, slots).to(dtype)
    _last_one_hot = (slot_ids, slots, dtype, made)
    return made


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    A: torch.Tensor,
    B: torch.Tensor,
    scale: float,
    x_lora: torch.Tensor | None = None,
) -> torch.Tensor:
    """Torch reference of ``lora_linear``: frozen base plus LoRA delta (``x_lora``: x after LoRA dropout)."""
    return torch.nn.functional.linear(x, weight, bias) + lora_forward(x if x_lora is None else x_lora, A, B, scale)


def nf4_linear(x: torch.Tensor, weight: torch.Tensor, quant_state, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Torch reference of ``nf4_linear``: dequantize the bitsandbytes NF4 weight, then a plain linear."""
    from bitsandbytes.functional import dequantize_4bit

    return torch.nn.functional.linear(x, dequantize_4bit(weight, quant_state).to(x.dtype), bias)


REFERENCES: dict[str, Callable[..., torch.Tensor]] = {
    "lora_forward": lora_forward,
    "lora_gather_forward": lora_gather_forward,
    "lora_linear": lora_linear,
    "nf4_linear": nf4_linear,
}
"""Every op the runtime uses, with the torch implementation that always runs."""


@dataclass(frozen=True)
class KernelChoice:
    """The implementation chosen for one op on one device and dtype, and why the others were passed over."""

    op: str
    name: str
    plugin: str | None  # None for the torch reference
    fn: Callable[..., torch.Tensor]
    passed_over: dict[str, str] = field(default_factory=dict)  # "plugin:kernel" -> reason


class _GuardedKernel:
    """Calls a plugin kernel where it fits the call's shapes, else the torch reference; the first time the kernel
    raises, warns and uses the torch reference from then on."""

    def __init__(self, op: str, label: str, fn: Callable[..., torch.Tensor],
                 fits: Callable[..., str | None] | None) -> None:  # fmt: skip
        self.op, self.label, self.fn, self.fits = op, label, fn, fits
        self.failed = False
        self.unfit: set[str] = set()  # reasons already logged, so a shape the kernel refuses is reported once

    def __call__(self, *args):
        if not self.failed and self._fits(args):
            try:
                return self.fn(*args)
            except Exception as exc:  # a broken kernel must not take a request down
                self.failed = True
                log.warning("kernel %s for %s raised %s: %s; using the torch reference instead",
                            self.label, self.op, type(exc).__name__, exc)  # fmt: skip
        return REFERENCES[self.op](*args)

    def _fits(self, args: tuple) -> bool:
        reason = self.fits(*args) if self.fits is not None else None
        if reason is not None and reason not in self.unfit:
            self.unfit.add(reason)
            log.info("kernel %s does not fit this %s call (%s); the torch reference runs it",
                     self.label, self.op, reason)  # fmt: skip
        return reason is None


def _device_type(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def choose_kernel(catalog: plugins.Catalog, op: str, device: torch.device | str, dtype: torch.dtype) -> KernelChoice:
    """Among ``catalog``'s kernels for ``op``, the highest-priority one that supports ``device`` and ``dtype``."""
    if op not in REFERENCES:
        raise KeyError(f"unknown op {op!r}; known ops: {', '.join(sorted(REFERENCES))}")
    device = _device_type(device)
    # (plugin, spec) pairs; the catalog files only KernelSpecs under kernels, the isinstance tells the type checker
    kernels = [(c.plugin, c.spec) for c in catalog.kernels.get(op, []) if isinstance(c.spec, KernelSpec)]
    candidates = sorted(kernels, key=lambda pair: -pair[1].priority)
    passed_over: dict[str, str] = {}
    for position, (plugin, spec) in enumerate(candidates):
        label = f"{plugin}:{spec.name}"
        try:
            reason = spec.supports(device, dtype)
        except Exception as exc:
            reason = f"support check raised {type(exc).__name__}: {exc}"
        if reason is None:
            others = dict(passed_over)
            for rest_plugin, rest in candidates[position + 1 :]:
                others[f"{rest_plugin}:{rest.name}"] = f"lower priority than {label}"
            return KernelChoice(op, spec.name, plugin, _GuardedKernel(op, label, spec.fn, spec.fits), others)
        passed_over[label] = reason
    return KernelChoice(op, "torch", None, REFERENCES[op], passed_over)


class _Choices:
    """Choices made from the current plugin catalog; made again once plugins are reloaded."""

    def __init__(self) -> None:
        self.catalog: plugins.Catalog | None = None
        self.made: dict[tuple[str, torch.device, torch.dtype], KernelChoice] = {}

    def get(self, op: str, device: torch.device, dtype: torch.dtype) -> KernelChoice:
        catalog = plugins.catalog()
        if catalog is not self.catalog:
            self.catalog, self.made = catalog, {}
        if (op, device, dtype) not in self.made:
            self.made[(op, device, dtype)] = choose_kernel(catalog, op, device, dtype)
        return self.made[(op, device, dtype)]


_CHOICES = _Choices()


def select_kernel(op: str, device: torch.device | str, dtype: torch.dtype) -> KernelChoice:
    """The implementation of ``op`` to run on ``device`` with ``dtype`` among the installed plugins' kernels,
    else the torch reference; chosen once per (op, device, dtype) and plugin catalog."""
    return _CHOICES.get(op, _device_type(device), dtype)


def kernel_report(device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> list[dict]:
    """For ``adapterhub plugins``: per op, the active implementation here and why each other one is not."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    report = []
    for op in sorted(REFERENCES):
        choice = select_kernel(op, device, dtype)
        active = "torch (reference)" if choice.plugin is None else f"{choice.plugin}:{choice.name}"
        report.append({"op": op, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
                       "active": active, "passed_over": dict(choice.passed_over)})  # fmt: skip
    return report
