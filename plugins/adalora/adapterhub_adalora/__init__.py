"""adapterhub method plugin: AdaLoRA on peft.

AdaLoRA starts every targeted module at rank ``init_r`` and, while training, moves rank to where the
importance scores say it matters until the average reaches ``target_r``. Two things need the training
loop, both through the shared ``MethodSpec`` contract: the schedule's length (``for_run`` fills
``total_step`` with the run's optimizer steps before attaching) and the reallocation itself
(``on_train_step`` calls peft's ``update_and_allocate`` after every optimizer step). The final rank
pattern is written by peft into ``adapter_config.json`` (``rank_pattern``), so the registry keeps it and a
pulled adapter is rebuilt with exactly those ranks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import adapterhub
from adapterhub.errors import OptionError
from adapterhub.specs import MethodSpec


@dataclass
class AdaLoraOptions:
    """AdaLoRA options.

    ``total_step``: length of the schedule in optimizer steps; 0 means "the training run's length" (filled
    in by ``adapterhub train``). ``warmup_fraction`` of the steps train at full rank before pruning starts;
    the last ``final_fraction`` train with the final ranks fixed. Ranks are re-allocated every ``delta_t``
    steps. Empty ``target_modules`` means peft's default for the architecture (query/value projections).
    """

    init_r: int = 12
    target_r: int = 4
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=list)
    total_step: int = 0
    warmup_fraction: float = 0.1
    final_fraction: float = 0.2
    delta_t: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5


def for_run(options: AdaLoraOptions, total_steps: int) -> AdaLoraOptions:
    return options if options.total_step > 0 else dataclasses.replace(options, total_step=total_steps)


def build_config(options: AdaLoraOptions, base):
    from peft import AdaLoraConfig

    from adapterhub.adapters import peft_task_type

    if options.total_step <= 0:
        raise OptionError(
            "method 'adalora' needs option 'total_step' (optimizer steps of the run) for its rank schedule; "
            "`adapterhub train` fills it in, from Python pass it (e.g. total_step=1000)"
        )
    if not 0 < options.target_r <= options.init_r:
        raise OptionError(f"method 'adalora' option 'target_r' must be between 1 and init_r ({options.init_r})")
    tinit = int(options.warmup_fraction * options.total_step)
    tfinal = int(options.final_fraction * options.total_step)
    if tinit >= options.total_step - tfinal:
        raise OptionError(
            f"method 'adalora' options 'warmup_fraction' and 'final_fraction' leave no steps to reallocate ranks in a "
            f"run of {options.total_step} steps; lower them or train longer"
        )
    return AdaLoraConfig(
        task_type=peft_task_type(base.task),
        init_r=options.init_r,
        target_r=options.target_r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=list(options.target_modules) or None,
        total_step=options.total_step,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=options.delta_t,
        beta1=options.beta1,
        beta2=options.beta2,
        orth_reg_weight=options.orth_reg_weight,
    )


def reallocate_ranks(model, step: int, total_steps: int) -> None:
    """peft's importance update and rank reallocation; runs after the optimizer step, before zero_grad."""
    model.base_model.update_and_allocate(step)


def name_the_trained_adapter(model) -> None:
    """peft 0.21's ``AdaLoraModel.forward`` adds its orthogonal regulariser to every loss it sees and reads
    the adapter's name for it from ``trainable_adapter_name``, which peft only sets for a trainable adapter;
    an adapter loaded for inference then fails on any batch with labels (evaluation). Name it here."""
    tuner = model.base_model
    if not hasattr(tuner, "trainable_adapter_name"):
        tuner.trainable_adapter_name = model.active_adapter


@adapterhub.hookimpl
def adapterhub_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="adalora",
            description="AdaLoRA: LoRA whose ranks are reallocated by importance during training",
            peft_type="ADALORA",
            options=AdaLoraOptions,
            build_config=build_config,
            capabilities=frozenset({"mergeable", "rank-schedule", "quantized-base"}),
            on_train_step=reallocate_ranks,
            for_run=for_run,
            after_load=name_the_trained_adapter,
        )
    ]
