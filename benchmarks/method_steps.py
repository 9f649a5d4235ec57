"""Step time and training memory of every row of the `methods` benchmark, both sides, measured together.

Whole training runs go one after another, so on a shared machine a load change lands on whole rows (that is
how LoRA once took 422 s against full fine-tuning's 46 s: the rows ran in that order while the load fell).
Here every row's two models are built first, then one optimizer step on the same batch is timed for every
(row, side) in turn, round after round, the order reversed every other round: all of them see the same load.
Before timing, each model's training memory over the frozen base is accounted (`training_memory`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from benchmarks.harness import BASELINE, OURS, Context
from benchmarks.method_baselines import PlainLoop, adalora_hook, causal_lm, classifier, has_peft_side
from benchmarks.training_memory import StepMemory, base_parameter_bytes, measure_step

FULL_FINE_TUNING, LINEAR_PROBE = "full fine-tuning", "linear probe"
STEP_CASE, MEMORY_CASE = "train step (all rows alternated)", "training memory over the frozen base"


def compare_steps(ctx: Context, runs, case) -> None:
    repeats, warmup = (2, 1) if ctx.quick else (3, 1)
    steppers: list[tuple[str, str, Callable[[], object]]] = []
    memory: dict[tuple[str, str], StepMemory] = {}
    for row in runs:
        model, batch, base_bytes, step = _ours(row, case)
        memory[row.label, OURS] = measure_step(model, batch, base_bytes)
        steppers.append((row.label, OURS, step))
        if has_peft_side(row.method):
            model, step = _peft(row, case, batch)
            memory[row.label, BASELINE] = measure_step(model, batch, base_bytes)
            steppers.append((row.label, BASELINE, step))
    samples = _round_robin(ctx, steppers, repeats, warmup)
    for (label, impl, _), times in zip(steppers, samples):
        what = "adapterhub.train.train over one batch" if impl == OURS else "PlainLoop.step (peft / plain torch)"
        ctx.record(STEP_CASE, impl, times, what=what, params={"method": label})
    for (label, impl), numbers in memory.items():
        ctx.record(MEMORY_CASE, impl, [numbers.total / 2**20], what="benchmarks.training_memory.measure_step",
                   params={"method": label}, unit="MB", extra=numbers.to_mb())  # fmt: skip
    ctx.table(
        "Training memory over the frozen base, MB, one step (new weights + gradients + AdamW state + activations saved for backward)",
        ["row", "side", "new weights", "gradients", "AdamW state", "saved activations", "total"],
        [[label, impl, *(numbers.to_mb()[k] for k in ("new_weights", "gradients", "optimizer_state", "activations", "total"))]
         for (label, impl), numbers in memory.items()],
    )  # fmt: skip
    ctx.note(f"Step times: {repeats} timed rounds after {warmup} untimed, every (row, side) once per round in alternating "
             "order, each on the same batch (32 tweets; 4 blocks of 64 tokens for the causal-LM row). The adapterhub side "
             "calls adapterhub.train.train over that one batch (a fresh AdamW each call, as every run starts); the peft side "
             "steps one persistent AdamW.")  # fmt: skip


def _round_robin(ctx: Context, steppers, repeats: int, warmup: int) -> list[list[float]]:
    from tqdm.auto import tqdm

    samples: list[list[float]] = [[] for _ in steppers]
    order = list(enumerate(steppers))
    with tqdm(
        total=(repeats + warmup) * len(steppers), desc="methods: steps", unit="step", disable=not ctx.progress
    ) as bar:
        for round_ in range(warmup + repeats):
            for k, (_, _, step) in order if round_ % 2 == 0 else reversed(order):
                started = time.perf_counter()
                step()
                elapsed = (time.perf_counter() - started) * 1000.0
                if round_ >= warmup:
                    samples[k].append(elapsed)
                bar.update(1)
    return samples


def _ours(row, case):
    """adapterhub's model for ``row`` as `train_adapter` builds it, the first training batch, the base's bytes,
    and a step: `adapterhub.train.train` over that one batch."""
    from adapterhub import adapters, plugins
    from adapterhub.base import load_base
    from adapterhub.train import seed_everything, train

    settings = case.settings(row)
    seed_everything(settings.seed)
    causal = row.model_task == "causal-lm"
    base = load_base(
        case.lm_path if causal else case.classifier_dir,
        model_task=row.model_task,
        labels=None if causal else case.labels,
    )
    batch = _first_batch(row, case, base, settings)
    base_bytes = base_parameter_bytes(base.model)
    on_step = None
    if row.method in (FULL_FINE_TUNING, LINEAR_PROBE):
        model = base.model
        for parameter in (model if row.method == FULL_FINE_TUNING else model.classifier).parameters():
            parameter.requires_grad_(True)
    else:
        spec = plugins.catalog().method(row.method)
        options = adapters.make_options(row.method, row.options)
        if spec.for_run is not None:
            options = spec.for_run(options, case.steps)
        model, on_step = adapters.attach(base, row.method, options), spec.on_train_step
    rows = len(batch["input_ids"])
    one = dataclasses.replace(settings, epochs=1, batch_size=rows)
    return (
        model,
        batch,
        base_bytes,
        lambda: train(model, lambda order: iter([batch]), rows, None, row.model_task, one, on_step, progress=False),
    )


def _first_batch(row, case, base, settings) -> dict:
    from adapterhub.batches import block_batches, classification_batches
    from adapterhub.data import load_text_blocks
    from adapterhub.prepare import classification_split

    if row.model_task == "causal-lm":
        blocks = load_text_blocks(case.lm_data.path, base.tokenizer, settings.block_size)
        return next(block_batches(blocks, base.tokenizer.pad_token_id, settings.batch_size))
    train_set, _ = classification_split(case.cls_data, case.labels)
    return next(classification_batches(train_set, base.tokenizer, settings.batch_size, settings.max_length))


def _peft(row, case, batch):
    import torch

    torch.manual_seed(case.seed)
    settings = case.settings(row)
    if row.model_task == "causal-lm":
        model = causal_lm(case.lm_dir, row.options)
    else:
        model = classifier(case.classifier_dir, case.labels, row.method, row.options, case.steps)
    loop = PlainLoop(model, settings.learning_rate, case.steps, adalora_hook(model))
    return model, lambda: loop.step(batch)
