"""adapterhub method plugin: prefix tuning on peft.

Trained key/value prefixes are fed to the attention of every layer through the model's past-key-values
input. For causal language models peft passes them by keyword and transformers accepts them. For sequence
classification peft 0.21 first checks that the model's ``forward`` has a ``past_key_values`` parameter,
which transformers 5 renamed to ``cache``; such a base is refused here with a clear message instead of
failing inside peft at the first forward pass.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import adapterhub
from adapterhub.errors import OptionError
from adapterhub.options import CheckedOptions, limited
from adapterhub.specs import MethodSpec


@dataclass
class PrefixTuningOptions(CheckedOptions):
    """Prefix tuning options. ``projection``: reparameterise the prefix through a two-layer MLP of
    ``projection_hidden_size`` (more stable training, more parameters while training)."""

    num_virtual_tokens: int = limited(20, min=1)
    projection: bool = False
    projection_hidden_size: int = limited(256, min=1)


def _accepts_past_key_values(model) -> bool:
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), model)
    return any("past_key_values" in inspect.signature(m.forward).parameters for m in (model, backbone))


def build_config(options: PrefixTuningOptions, base):
    from peft import PrefixTuningConfig

    from adapterhub.model_tasks import peft_task_type

    if base.model_task == "seq-cls" and not _accepts_past_key_values(base.model):
        raise OptionError(
            f"prefix tuning for sequence classification needs a model whose forward takes `past_key_values`; "
            f"{type(base.model).__name__} does not in this transformers version (it is called `cache`), so peft "
            f"cannot feed it the prefixes. Use prompt_tuning for this task, or prefix tuning with --task causal-lm."
        )
    return PrefixTuningConfig(
        task_type=peft_task_type(base.model_task),
        num_virtual_tokens=options.num_virtual_tokens,
        prefix_projection=options.projection,
        encoder_hidden_size=options.projection_hidden_size,
    )


@adapterhub.hookimpl
def adapterhub_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="prefix_tuning",
            description="Prefix tuning: trained key/value prefixes in every attention layer (causal LMs)",
            peft_type="PREFIX_TUNING",
            options=PrefixTuningOptions,
            build_config=build_config,
            capabilities=frozenset({"quantized-base", "causal-lm-only"}),
        )
    ]
