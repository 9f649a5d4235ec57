"""What a plugin contributes, as plain dataclasses returned from the hooks in ``hookspecs``.

Every adapter method is built on peft (peft's own tuners, or a tuner registered with
``peft.register_peft_method``), so a method spec only says how to turn user options into a peft config;
attaching, saving and loading go through peft in one shared place (``adapterhub.adapters``) instead of
being re-implemented by every plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

TASKS = ("seq-cls", "causal-lm")
"""Tasks a base model can be loaded for: sequence classification and causal language modelling."""


@dataclass(frozen=True)
class MethodSpec:
    """An adapter method.

    ``options`` is a dataclass whose fields (with defaults) are the method's user-facing options;
    ``build_config(options, base)`` returns the ``peft.PeftConfig`` to attach to ``base`` (an
    ``adapterhub.base.Base``: its ``task``, ``model``, ``tokenizer`` and ``source`` are there to read). ``peft_type`` is the
    ``peft_type`` written in ``adapter_config.json`` so a PEFT directory can be imported to this method.
    ``on_train_step(model, step, total_steps)`` runs after every optimizer step, before gradients are
    cleared (rank schedules such as AdaLoRA's read them). ``for_run(options, total_steps)`` returns the
    options to attach with for a training run of ``total_steps`` optimizer steps; a method whose config
    depends on the length of the run (AdaLoRA's budget schedule) fills it in there, before the adapter is
    attached. ``after_load(model)`` runs after a stored adapter has been attached and its tensors loaded
    (a method repairs peft state there that peft only sets up for training). ``capabilities`` are shown by ``adapterhub plugins`` (e.g. ``mergeable``, ``slottable``,
    ``rank-schedule``, ``causal-lm-only``, ``quantized-base``).
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
