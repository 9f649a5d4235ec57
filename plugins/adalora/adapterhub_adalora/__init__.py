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
from dataclasses import dataclass

import adapterhub
from adapterhub.errors import OptionError
from adapterhub.options import CheckedOptions, limited
from adapterhub.specs import MethodSpec


@dataclass
class AdaLoraOptions(CheckedOptions):
    """AdaLoRA options.

    ``total_step``: length of the schedule in optimizer steps; 0 means "the training run's length" (filled
    in by ``adapterhub train``). ``warmup_fraction`` of the steps train at full rank before pruning starts;
    the last ``final_fraction`` train with the final ranks fixed. Ranks are re-allocated every ``delta_t``
    steps. Empty ``target_modules`` means peft's default for the architecture (query/value projections).
    """

    init_r: int = limited(12, min=1)
    target_r: int = limited(4, min=1)
    alpha: int = limited(16, above=0)
    dropout: float = limited(0.05, min=0, below=1)
    target_modules: list[str] = dataclasses.field(default_factory=list)
    total_step: int = limited(0, min=0)
    warmup_fraction: float = limited(0.1, min=0, below=1)
    final_fraction: float = limited(0.2, min=0, below=1)
    delta_t: int = limited(1, min=1)
    beta1: float = limited(0.85, min=0, below=1)
    beta2: float = limited(0.85, min=0, below=1)
    orth_reg_weight: float = limited(0.5, min=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_r > self.init_r:
            raise OptionError(
                f"option 'target_r': bad value {self.target_r}; valid values: 1 <= target_r <= init_r ({self.init_r})"
            )
        too_long = self.warmup_fraction + self.final_fraction >= 1
        if too_long or (self.total_step and self.tinit >= self.total_step - self.tfinal):
            raise OptionError(
                f"options 'warmup_fraction' and 'final_fraction' leave no steps to reallocate ranks "
                f"({self.warmup_fraction} + {self.final_fraction} of {self.total_step or 'any number of'} steps); "
                f"lower them so they sum to well under 1, or train longer"
            )

    @property
    def tinit(self) -> int:
        """peft's ``tinit``: the warm-up steps at full rank."""
        return int(self.warmup_fraction * self.total_step)

    @property
    def tfinal(self) -> int:
        """peft's ``tfinal``: the last steps, with the final ranks fixed."""
        return int(self.final_fraction * self.total_step)


def for_run(options: AdaLoraOptions, total_steps: int) -> AdaLoraOptions:
    return options if options.total_step > 0 else dataclasses.replace(options, total_step=total_steps)


def build_config(options: AdaLoraOptions, base):
    from peft import AdaLoraConfig

    from adapterhub.model_tasks import peft_task_type

    if options.total_step <= 0:
        raise OptionError(
            "method 'adalora' needs option 'total_step' (optimizer steps of the run) for its rank schedule; "
            "`adapterhub train` fills it in, from Python pass it (e.g. total_step=1000)"
        )
    return AdaLoraConfig(
        task_type=peft_task_type(base.model_task),
        init_r=options.init_r,
        target_r=options.target_r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=list(options.target_modules) or None,
        total_step=options.total_step,
        tinit=options.tinit,
        tfinal=options.tfinal,
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
            capabilities=frozenset({"merges-into-base", "rank-schedule", "quantized-base"}),
            on_train_step=reallocate_ranks,
            for_run=for_run,
            after_load=name_the_trained_adapter,
        )
    ]
