"""adapterhub method plugin: IA3 on peft.

IA3 learns one scaling vector per targeted projection (keys, values and the feed-forward input), so it
trains very few parameters. Here: the mapping from our options to ``peft.IA3Config``, (in ``slots``, imported
on first use) how a stored IA3 adapter becomes slot contents, so it mixes with LoRA rows in a batch, and (in
``merging``, torch-free) how IA3 adapters combine into one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import adapterhub
from adapterhub.errors import OptionError
from adapterhub.options import CheckedOptions
from adapterhub.specs import MethodSpec
from adapterhub_ia3.merging import MERGE


@dataclass
class IA3Options(CheckedOptions):
    """IA3 options. Empty module lists mean peft's defaults for the architecture (e.g. k/v/down_proj on Llama).

    ``feedforward_modules`` (a subset of ``target_modules``) are scaled on their input instead of their output.
    """

    target_modules: list[str] = field(default_factory=list)
    feedforward_modules: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        outside = sorted(set(self.feedforward_modules) - set(self.target_modules)) if self.target_modules else []
        if outside:
            raise OptionError(
                f"option 'feedforward_modules': {', '.join(outside)} not in target_modules ({', '.join(self.target_modules)}); "
                f"feed-forward modules must be a subset of the target modules"
            )


def build_config(options: IA3Options, base):
    from peft import IA3Config

    from adapterhub.model_tasks import peft_task_type

    return IA3Config(
        task_type=peft_task_type(base.model_task),
        target_modules=list(options.target_modules) or None,
        feedforward_modules=list(options.feedforward_modules) or None,
    )


def slot_plan(peft_config, modules, layout):
    from adapterhub_ia3.slots import slot_plan as plan

    return plan(peft_config, modules, layout)


@adapterhub.hookimpl
def adapterhub_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="ia3",
            description="IA3: learned scaling of keys, values and feed-forward activations",
            peft_type="IA3",
            options=IA3Options,
            build_config=build_config,
            capabilities=frozenset({"mergeable", "merges-into-base", "slottable", "quantized-base"}),
            slot_plan=slot_plan,
            merge=MERGE,
        )
    ]
