"""The whole training runs of the `methods` benchmark, both sides, and how they are recorded.

`train_ours` is adapterhub (`train_adapter`, or `load_base` + `adapterhub.train.train` for the references);
`train_peft` is the plain side of `benchmarks/method_baselines.py`. Each returns the same dict: metrics,
seconds, steps, trainable parameters and saved size. `record_runs` turns them into the report's rows.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.harness import OURS, Context
from benchmarks.method_baselines import (
    PlainLoop,
    adalora_hook,
    block_batches,
    causal_lm,
    classifier,
    classifier_metrics,
    epoch_orders,
    perplexity,
    saved_size,
    text_batches,
)

FULL_FINE_TUNING, LINEAR_PROBE = "full fine-tuning", "linear probe"


def train_ours(row, case) -> dict:
    from adapterhub.errors import AdapterHubError
    from adapterhub.workflow import TrainJob, train_adapter

    if row.method in (FULL_FINE_TUNING, LINEAR_PROBE):
        return _train_reference(row, case)
    base, data = (case.lm_path, case.lm_data) if row.model_task == "causal-lm" else (case.classifier_dir, case.cls_data)
    try:
        outcome = train_adapter(TrainJob(base, row.method, data, model_task=row.model_task, options=row.options,
                                         settings=case.settings(row), progress=False, monitor=case.monitor()))  # fmt: skip
    except AdapterHubError as exc:  # a method that cannot run on this base: reported, not fatal
        return {"skipped": str(exc)}
    return {"metrics": outcome.result.metrics, "seconds": outcome.result.train_seconds, "steps": outcome.result.steps,
            "trainable_parameters": outcome.trainable_parameters, "adapter_bytes": outcome.adapter_bytes}  # fmt: skip


def _train_reference(row, case) -> dict:
    """Full fine-tuning or a linear probe: the same data, batches and loop as the adapters, no adapter."""
    from safetensors.torch import save_file

    from adapterhub.base import load_base
    from adapterhub.batches import classification_batches
    from adapterhub.prepare import classification_split
    from adapterhub.train import seed_everything, train

    settings = case.settings(row)
    seed_everything(settings.seed)
    base = load_base(case.classifier_dir, model_task="seq-cls", labels=case.labels)
    train_set, test_set = classification_split(case.cls_data, case.labels)
    for parameter in (base.model if row.method == FULL_FINE_TUNING else base.model.classifier).parameters():
        parameter.requires_grad_(True)
    result = train(
        base.model,
        lambda order: classification_batches(train_set, base.tokenizer, settings.batch_size, settings.max_length, order),
        len(train_set.texts),
        lambda: classification_batches(test_set, base.tokenizer, settings.eval_batch_size, settings.max_length),
        "seq-cls", settings, progress=False, monitor=case.monitor(),
    )  # fmt: skip
    trained = {n: p.detach().contiguous() for n, p in base.model.named_parameters() if p.requires_grad}
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "weights.safetensors"
        save_file(trained, path)
        size = path.stat().st_size
    return {"metrics": result.metrics, "seconds": result.train_seconds, "steps": result.steps, "adapter_bytes": size,
            "trainable_parameters": sum(t.numel() for t in trained.values())}  # fmt: skip


def train_peft(row, case) -> dict:
    """The plain-peft side of ``row``: build, train (timed with the held-out evaluation, as adapterhub's run is), save."""
    import torch

    torch.manual_seed(case.seed)
    settings = case.settings(row)
    if row.model_task == "causal-lm":
        model, batches, n_train, evaluate = _causal_lm_side(row, case, settings)
    else:
        model, batches, n_train, evaluate = _classifier_side(row, case, settings)
    steps = -(-n_train // settings.batch_size) * settings.epochs
    loop = PlainLoop(model, settings.learning_rate, steps, adalora_hook(model))
    started = time.perf_counter()
    for rows in epoch_orders(n_train, settings.batch_size, settings.epochs, settings.seed):
        loop.step(next(batches(rows)))
    metrics = evaluate()
    seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as directory:
        size = saved_size(model, directory)
    return {"metrics": metrics, "seconds": seconds, "steps": loop.done, "adapter_bytes": size,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}  # fmt: skip


def _classifier_side(row, case, settings):
    from transformers import AutoTokenizer

    from adapterhub.prepare import classification_split

    train_set, test_set = classification_split(case.cls_data, case.labels)  # the same rows as adapterhub
    steps = -(-len(train_set.texts) // settings.batch_size) * settings.epochs
    model = classifier(case.classifier_dir, case.labels, row.method, row.options, steps)
    tokenizer = AutoTokenizer.from_pretrained(case.classifier_dir)
    size, length = settings.batch_size, settings.max_length
    return (
        model,
        lambda rows: text_batches(tokenizer, train_set.texts, train_set.labels, size, length, rows),
        len(train_set.texts),
        lambda: classifier_metrics(
            model, text_batches(tokenizer, test_set.texts, test_set.labels, settings.eval_batch_size, length)
        ),
    )


def _causal_lm_side(row, case, settings):
    from transformers import AutoTokenizer

    from adapterhub.data import load_text_blocks, split_blocks

    tokenizer = AutoTokenizer.from_pretrained(case.lm_dir)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    blocks = load_text_blocks(case.lm_data.path, tokenizer, settings.block_size)  # the same blocks as adapterhub
    train_blocks, test_blocks = split_blocks(blocks, case.lm_data.test_split, case.lm_data.seed)
    model = causal_lm(case.lm_dir, row.options)
    return (
        model,
        lambda rows: block_batches(train_blocks, pad, settings.batch_size, rows),
        len(train_blocks),
        lambda: perplexity(model, block_batches(test_blocks, pad, settings.eval_batch_size)),
    )


CLASSIFIER_CASES = (("accuracy", "accuracy"), ("macro-F1", "f1_macro"), ("ROC-AUC (one-vs-rest)", "roc_auc"))


def record_runs(ctx: Context, runs, results: dict[str, dict]) -> None:
    """One row per (quantity, method), the adapterhub and peft sides as the two columns."""
    majority = ctx.settings["majority_baseline"]
    for row in runs:
        for impl, numbers in results[row.label].items():
            if "skipped" in numbers:
                ctx.note(f"{row.label} did not run on the {impl} side: {numbers['skipped']}")
                continue
            params, what = {"method": row.label}, _what(row, impl)
            metrics = numbers["metrics"]
            cases = CLASSIFIER_CASES if row.model_task == "seq-cls" else (("held-out perplexity", "perplexity"),)
            for case, key in cases:
                ctx.record(case, impl, [metrics[key]], what=what, params=params, unit="" if key != "perplexity" else "ppl",
                           extra={**numbers, "learning_rate": row.learning_rate, "options": row.options} if case == cases[0][0] else None)  # fmt: skip
            ctx.record(
                "trainable parameters", impl, [numbers["trainable_parameters"]], what=what, params=params, unit="params"
            )
            ctx.record(
                "saved adapter / weights", impl, [numbers["adapter_bytes"] / 1024], what=what, params=params, unit="KiB"
            )
            ctx.record(
                "whole training run (sequential)", impl, [numbers["seconds"]], what=what, params=params, unit="s"
            )
            if row.model_task == "seq-cls":
                beat = metrics["accuracy"] > majority
                ctx.note(f"{row.label} ({impl}): accuracy {metrics['accuracy']:.4f} vs majority class {majority:.4f} — "
                         f"{'beats it' if beat else 'DOES NOT beat it'}")  # fmt: skip
    ctx.table(
        "Whole training runs, in the order they ran: the machine's 1-minute load average before and after, and "
        "the benchmark process's CPU seconds",
        ["row", "side", "steps", "seconds", "CPU seconds", "load before", "load after"],
        [[row.label, impl, n.get("steps"), n.get("seconds"), n["cpu_seconds"], n["load_before"], n["load_after"]]
         for row in runs for impl, n in results[row.label].items()],
    )  # fmt: skip


def _what(row, impl: str) -> str:
    if impl == OURS:
        if row.method in (FULL_FINE_TUNING, LINEAR_PROBE):
            return f"load_base + adapterhub.train.train, lr={row.learning_rate:g}"
        return (
            f"train_adapter(TrainJob(method={row.method!r}, model_task={row.model_task!r}, lr={row.learning_rate:g}))"
        )
    if row.method in (FULL_FINE_TUNING, LINEAR_PROBE):
        return f"from_pretrained + plain torch loop (no peft), lr={row.learning_rate:g}"
    return f"get_peft_model({row.method} config) + plain torch loop, lr={row.learning_rate:g}"
