"""adapterhub method plugin: LoRA on peft (rsLoRA and DoRA options).

Here: the mapping from our options to ``peft.LoraConfig``, and the method's seams to the core, each in its own
module: ``slots`` (a stored adapter as slot contents, DoRA included) and ``dispatch`` (peft's LoRA layers sent
to a fused kernel), both imported on first use (this module stays import-light for the CLI), and ``merging``
(how LoRA adapters combine into one, and which are refused; torch-free).
Attaching, training, saving and loading are shared by every method in the core.
"""

from __future__ import annotations

from dataclasses import dataclass

import adapterhub
from adapterhub.options import CheckedOptions, limited
from adapterhub.specs import MethodSpec
from adapterhub_lora.merging import MERGE


@dataclass
class LoraOptions(CheckedOptions):
    """LoRA options. ``target_modules``: "all-linear" or module names (e.g. ``["q_proj", "v_proj"]``)."""

    r: int = limited(8, min=1)
    alpha: int = limited(16, above=0)
    dropout: float = limited(0.05, min=0, below=1)
    target_modules: list[str] = limited(default_factory=lambda: ["all-linear"], nonempty=True)
    rslora: bool = False
    dora: bool = False
    bias: str = limited("none", choices=("none", "all", "lora_only"))


def build_config(options: LoraOptions, base):
    from peft import LoraConfig

    from adapterhub.model_tasks import peft_task_type

    targets = options.target_modules
    return LoraConfig(
        task_type=peft_task_type(base.model_task),
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        use_rslora=options.rslora,
        use_dora=options.dora,
        bias=options.bias,
    )


def slot_plan(peft_config, modules, layout):
    from adapterhub_lora.slots import slot_plan as plan

    return plan(peft_config, modules, layout)


def dispatch_layers(model) -> None:  # not `dispatch`: importing the submodule would rebind that name
    from adapterhub_lora.dispatch import dispatch_fused_lora

    dispatch_fused_lora(model)


@adapterhub.hookimpl
def adapterhub_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="lora",
            description="Low-rank adaptation (LoRA; rsLoRA and DoRA options)",
            peft_type="LORA",
            options=LoraOptions,
            build_config=build_config,
            capabilities=frozenset({"mergeable", "merges-into-base", "slottable", "quantized-base"}),
            slot_plan=slot_plan,
            dispatch=dispatch_layers,
            merge=MERGE,
        )
    ]
