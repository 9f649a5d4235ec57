"""A LoRA method written against adapterhub plugin API 1.0, left as it was then: do not modernise it.

It reads ``base.task`` (now ``Base.model_task``) and imports ``peft_task_type`` from ``adapterhub.adapters`` (now
``adapterhub.model_tasks``), both kept as warning aliases; its options are a plain dataclass (``CheckedOptions``
came later). ``tests/test_plugin_api.py`` trains with it in a subprocess.
"""

from __future__ import annotations

from dataclasses import dataclass

import adapterhub
from adapterhub.specs import MethodSpec


@dataclass
class OldSurfaceLoraOptions:
    r: int = 4
    alpha: int = 8
    target_modules: str = "all-linear"


def build_config(options: OldSurfaceLoraOptions, base):
    from peft import LoraConfig

    from adapterhub.adapters import peft_task_type

    targets = options.target_modules
    return LoraConfig(
        task_type=peft_task_type(base.task),
        r=options.r,
        lora_alpha=options.alpha,
        target_modules=targets if targets == "all-linear" else targets.split(","),
    )


@adapterhub.hookimpl
def adapterhub_methods():
    return [
        MethodSpec(
            name="old_surface_lora",
            description="LoRA written against plugin API 1.0 (test plugin)",
            peft_type="LORA",
            options=OldSurfaceLoraOptions,
            build_config=build_config,
        )
    ]
