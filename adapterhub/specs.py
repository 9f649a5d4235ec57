"""What a plugin contributes, as plain dataclasses returned from the hooks in ``hookspecs``.

Every adapter method is built on peft (peft's own tuners, or a tuner registered with
``peft.register_peft_method``), so a method spec only says how to turn user options into a peft config;
attaching, saving and loading go through peft in one shared place (``adapterhub.adapters``) instead of
being re-implemented by every plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adapterhub.deprecation import moved_names

if TYPE_CHECKING:  # specs stay import-light: plugins and the CLI import them without torch
    import torch

# plugin API 1.0 had the model tasks here; they live in adapterhub.model_tasks now (docs/plugins.md, deprecation)
__getattr__ = moved_names(__name__, {"TASKS": "adapterhub.model_tasks.NAMES"}, since="1.1", removed_in="1.3")


@dataclass(frozen=True)
class MethodSpec:
    """An adapter method.

    ``options`` is a dataclass whose fields (with defaults) are the method's user-facing options;
    ``build_config(options, base)`` returns the ``peft.PeftConfig`` to attach to ``base`` (an
    ``adapterhub.base.Base``: its ``model_task``, ``model``, ``tokenizer`` and ``source`` are there to read).
    ``peft_type`` is the
    ``peft_type`` written in ``adapter_config.json`` so a PEFT directory can be imported to this method.
    ``on_train_step(model, step, total_steps)`` runs after every optimizer step, before gradients are
    cleared (rank schedules such as AdaLoRA's read them). ``for_run(options, total_steps)`` returns the
    options to attach with for a training run of ``total_steps`` optimizer steps; a method whose config
    depends on the length of the run (AdaLoRA's budget schedule) fills it in there, before the adapter is
    attached. ``after_load(model)`` runs after a stored adapter has been attached and its tensors loaded
    (a method repairs peft state there that peft only sets up for training). ``capabilities`` are shown by
    ``adapterhub plugins`` (e.g. ``mergeable``, ``merges-into-base``, ``slottable``, ``rank-schedule``,
    ``causal-lm-only``, ``quantized-base``).

    The seams through which the core uses a method without knowing its tensors' names, all optional:

    * ``slot_plan(peft_config, modules, layout)`` says how a stored adapter becomes slot contents, so the
      adapter pool can serve it from resident slots in mixed batches. ``modules`` maps each slotted module
      the adapter touches to its tensors, keyed by what follows the module name in the PEFT file (the core
      never reads a method's key names). It returns ``{module: SlotContents}`` or raises ``NotSlottable``
      naming why (the adapter then swaps through peft). A method with a ``slot_plan`` has the capability
      ``slottable``; the catalog checks the two agree.
    * ``dispatch(model)`` runs after ``adapters.attach`` has wrapped the base: the method routes its peft
      layers to a kernel of ``adapterhub.kernels`` where one is chosen for the base's device and dtype
      (LoRA sends its layers to the fused ``lora_linear`` op), and leaves peft's forward where none is.
    * ``merge`` (a ``MergeSpec``) says how the method's adapters combine into one (``adapterhub merge``,
      ``continual merge``): which of their tensors are the per-module deltas, how peft combines them, what the
      merged config is, and which adapters it refuses. The merge refuses a method without one, naming it. A
      method with a ``merge`` has the capability ``mergeable``; the catalog checks the two agree. (Merging an
      adapter into the base's weights, ``registry export-merged``, is the capability ``merges-into-base``.)
    """

    name: str
    description: str
    peft_type: str
    options: type
    build_config: Callable[[Any, Any], Any]
    capabilities: frozenset[str] = field(default_factory=frozenset)
    on_train_step: Callable[[Any, int, int], None] | None = None
    for_run: Callable[[Any, int], Any] | None = None
    after_load: Callable[[Any], None] | None = None
    slot_plan: Callable[[dict, dict[str, dict[str, Any]], SlotLayout], dict[str, SlotContents]] | None = None
    dispatch: Callable[[Any], None] | None = None
    merge: MergeSpec | None = None


@dataclass(frozen=True)
class MergeSpec:
    """How a method's adapters combine into one adapter, given as ``MethodSpec.merge``.

    The core checks the recipe and the inputs (one base, one model task, one method), loads every input onto one
    ``peft.PeftModel`` as the adapters ``inputs`` (their task heads left out), and asks the method for the rest:

    * ``combinations``: which of the core's combinations (``adapterhub.merging.COMBINATIONS``, peft's names) the
      method computes; another is refused before anything loads.
    * ``refuse(peft_config)``: why an input with this ``adapter_config.json`` would be merged wrongly, as the words
      that follow its ref in the error (``"is a DoRA adapter: ..."``), or None when it merges correctly.
    * ``is_delta(key)``: whether a saved tensor (its key in the PEFT file) is one of the method's per-module
      tensors, which ``combine`` merges. The others are the task head (peft's ``modules_to_save``): the core
      combines heads itself, as their weighted mean or one input's own head, because peft refuses several heads.
    * ``combine(model, inputs, weights, into, combination, density)``: add the merged adapter to ``model`` as the
      adapter ``into``, with peft's own merging utilities where peft has them. The core seeds torch beforehand
      (dare drops at random) and turns a ``ValueError`` (inputs that cannot be combined so, naming why) into an
      error naming the inputs.
    * ``merged_config(config)``: the merged adapter's ``adapter_config.json`` from the one peft records for it
      (a dict), where the method repairs what peft's merge records wrong (LoRA: the inputs' rsLoRA scaling is
      already in the merged tensors).
    """

    combinations: tuple[str, ...]
    is_delta: Callable[[str], bool]
    combine: Callable[[Any, list[str], list[float], str, str, float | None], None]
    refuse: Callable[[dict], str | None] = lambda peft_config: None
    merged_config: Callable[[dict], dict] = lambda config: config


class NotSlottable(Exception):
    """The adapter is valid but cannot live in a slot; the message says why (it loads through peft instead)."""


@dataclass(frozen=True)
class SlotLayout:
    """What an adapter pool offers a method's ``slot_plan``: its slotted linear layers and their limits.

    ``shapes`` maps each slotted module name to ``(d_in, d_out)``; ``max_rank`` is the widest low-rank pair a slot
    holds; ``weight(module)`` returns that module's frozen base weight ``(d_out, d_in)`` in float32, dequantized
    when the base is quantized, and ``bias(module)`` its bias or None (for methods whose slot contents depend on
    them, such as DoRA's column norms).
    """

    shapes: dict[str, tuple[int, int]]
    max_rank: int
    weight: Callable[[str], torch.Tensor]
    bias: Callable[[str], torch.Tensor | None]


@dataclass
class SlotContents:
    """One adapter's contents for one slotted layer. With ``base(x)`` the layer's frozen output, a row of this
    adapter computes::

        y = out_scale * (base(in_scale * x) + scale * (x @ A.T) @ B.T) + out_shift

    Every part is optional (None: absent), so LoRA and rsLoRA fill ``A``/``B``/``scale``, DoRA adds its
    per-column ``out_scale`` and ``out_shift``, and IA3 fills ``out_scale`` (or ``in_scale`` on feed-forward
    layers) alone. ``A``: (r, d_in); ``B``: (d_out, r); vectors: (d_in,) or (d_out,).
    """

    A: torch.Tensor | None = None
    B: torch.Tensor | None = None
    scale: float = 0.0
    in_scale: torch.Tensor | None = None
    out_scale: torch.Tensor | None = None
    out_shift: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return 0 if self.A is None else self.A.shape[0]

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.A, self.B, self.in_scale, self.out_scale, self.out_shift) if t is not None]


@dataclass(frozen=True)
class QuantizerSpec:
    """A way to load the frozen base quantized.

    ``load_kwargs(dtype)`` returns extra keyword arguments for transformers ``from_pretrained``
    (e.g. a ``quantization_config``); ``unavailable()`` returns a reason the quantizer cannot run here,
    or None when it can.
    """

    name: str
    description: str
    load_kwargs: Callable[[Any], dict]
    unavailable: Callable[[], str | None] = lambda: None


@dataclass(frozen=True)
class KernelSpec:
    """An accelerated implementation of a named op (e.g. ``lora_forward``).

    ``supports(device, dtype)`` returns None when the kernel can run there, else the reason it cannot;
    among supporting kernels the highest ``priority`` wins, and the torch reference runs when none does.
    ``fits(*args)``, when given, is asked on every call with the op's own arguments and returns None when the
    kernel can compute that shape, else the reason it cannot (e.g. a rank wider than its tiles hold); that call
    then runs the torch reference. It must be cheap: shapes and attributes only, no device synchronisation.
    """

    op: str
    name: str
    fn: Callable[..., Any]
    supports: Callable[[Any, Any], str | None]
    priority: int = 0
    fits: Callable[..., str | None] | None = None
