"""adapterhub method plugin: prompt tuning on peft.

A few trained "virtual token" embeddings are prepended to every input; the base model is untouched. With
``init=text`` the virtual tokens start as the embeddings of ``init_text``, tokenized with the base model's
own local tokenizer (its directory or GGUF file), never one fetched from the hub.
"""

from __future__ import annotations

from dataclasses import dataclass

import adapterhub
from adapterhub.errors import OptionError
from adapterhub.options import CheckedOptions, limited
from adapterhub.specs import MethodSpec

INITS = ("random", "text")


@dataclass
class PromptTuningOptions(CheckedOptions):
    """Prompt tuning options. ``init``: "random" or "text" (then ``init_text`` is required)."""

    num_virtual_tokens: int = limited(20, min=1)
    init: str = limited("random", choices=INITS)
    init_text: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init == "text" and not self.init_text.strip():
            raise OptionError(
                "option 'init_text' is required with init=text (e.g. -o init_text='Classify the sentiment')"
            )


def build_config(options: PromptTuningOptions, base):
    from peft import PromptTuningConfig, PromptTuningInit

    from adapterhub.model_tasks import peft_task_type

    if options.init == "random":
        return PromptTuningConfig(
            task_type=peft_task_type(base.model_task), num_virtual_tokens=options.num_virtual_tokens
        )
    return PromptTuningConfig(
        task_type=peft_task_type(base.model_task),
        num_virtual_tokens=options.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT,
        prompt_tuning_init_text=options.init_text,
        tokenizer_name_or_path=str(base.source),
        tokenizer_kwargs={"gguf_file": base.gguf_file} if base.gguf_file else None,
    )


@adapterhub.hookimpl
def adapterhub_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="prompt_tuning",
            description="Prompt tuning: trained soft-prompt embeddings prepended to the input (random or text init)",
            peft_type="PROMPT_TUNING",
            options=PromptTuningOptions,
            build_config=build_config,
            capabilities=frozenset({"quantized-base"}),
        )
    ]
