"""The plain-peft side of the `distributed` benchmark: what a peft user writes without adapterhub.

`transformers.Trainer` on `peft.get_peft_model(AutoModelForSequenceClassification, LoraConfig(...))`, trained on
exactly the rows `adapterhub train` trains on (adapterhub's own split, so only the library differs), with
adapterhub's default hyper-parameters, no evaluation and no checkpoints. Started plainly for one process or
under torchrun for several, like `adapterhub train`; `Trainer` then runs DDP over gloo by itself.

    python -m benchmarks.peft_trainer_baseline --model DIR --data CSV --max-samples 3000 --times times.json

Rank 0 writes `times.json`: each optimizer step's busy time (`on_step_begin` to `on_step_end`) and its full
interval (one `on_step_end` to the next, so data loading counts too), in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transformers import TrainerCallback

from adapterhub.distributed import launched_world_size
from adapterhub.train import TrainSettings

LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"}  # the lora plugin's defaults, r=8


class StepTimer(TrainerCallback):
    """Wall-clock stamps of every optimizer step, taken by the Trainer's own callback hooks."""

    def __init__(self) -> None:
        self.begins: list[float] = []
        self.ends: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())  # the first interval starts here

    def on_step_begin(self, args, state, control, **kwargs):
        self.begins.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def summary(self) -> dict:
        busy = [(end - begin) * 1000.0 for begin, end in zip(self.begins, self.ends[1:])]
        interval = [(b - a) * 1000.0 for a, b in zip(self.ends, self.ends[1:])]
        return {"step_ms": busy, "interval_ms": interval}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peft_trainer_baseline", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", required=True, help="Base model directory (a BERT-style encoder).")
    parser.add_argument(
        "--data", required=True, help="CSV of labelled texts (deduplicated as adapterhub --dedupe does)."
    )
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="sentiment")
    parser.add_argument("--encoding", default="latin-1")
    parser.add_argument(
        "--max-samples", type=int, required=True, help="The same subset adapterhub train --max-samples takes."
    )
    parser.add_argument("--batch-size", type=int, default=32, help="Global batch, shared between the processes.")
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--times", required=True, type=Path, help="Where rank 0 writes the per-step times (JSON).")
    return parser.parse_args(argv)


def _training_examples(args: argparse.Namespace, tokenizer) -> tuple[list[dict], list[str]]:
    """adapterhub's train split of the data (same dedupe, cap and hash split), tokenised without padding:
    the collator pads each batch to its longest text, as adapterhub does."""
    from adapterhub.prepare import classification_split, labels_of
    from adapterhub.workflow import DataSpec

    spec = DataSpec(args.data, text_column=args.text_column, label_column=args.label_column, encoding=args.encoding,
                    dedupe=True, max_samples=args.max_samples, seed=args.seed)  # fmt: skip
    labels = labels_of(spec)
    train_set, _ = classification_split(spec, labels)
    encoded = tokenizer(train_set.texts, truncation=True, max_length=args.max_length)
    examples = [{"input_ids": ids, "attention_mask": mask, "labels": label}
                for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], train_set.labels)]  # fmt: skip
    return examples, labels


def _train(args: argparse.Namespace, processes: int) -> None:
    """Train with Trainer; rank 0 writes the step times to ``args.times``."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    defaults = TrainSettings()  # adapterhub's defaults: the baseline trains with the same hyper-parameters
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    examples, labels = _training_examples(args, tokenizer)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                        target_modules=LORA["target_modules"])  # fmt: skip
    model = get_peft_model(model, config)
    training = TrainingArguments(
        output_dir=str(args.times.parent / "trainer-output"),
        per_device_train_batch_size=args.batch_size // processes,
        num_train_epochs=args.epochs,
        learning_rate=defaults.learning_rate,
        warmup_steps=defaults.warmup_ratio,  # below 1: a fraction of all steps (transformers 5 folded warmup_ratio in here)
        weight_decay=defaults.weight_decay,
        max_grad_norm=defaults.grad_clip,
        lr_scheduler_type="linear",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=args.seed,
    )  # fmt: skip
    timer = StepTimer()
    trainer = Trainer(model=model, args=training, train_dataset=examples, data_collator=DataCollatorWithPadding(tokenizer),
                      callbacks=[timer])  # fmt: skip
    trainer.train()
    if trainer.is_world_process_zero():
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        document = {
            **timer.summary(),
            "world_size": processes,
            "train_examples": len(examples),
            "trainable_parameters": trainable,
        }
        args.times.write_text(json.dumps(document))


def _leave_process_group() -> None:
    """Tear down the gloo group Trainer leaves open, while every rank is still alive.

    Left to interpreter exit, a rank can abort ("terminate called without an active exception", pytorch#190489)
    or hang: destroying the group joins gloo's worker threads while holding the GIL, and a worker still freeing
    the tensors of a just-finished all_gather (Trainer gathers the flop count at the end) waits for that GIL.
    The barrier gives those workers the GIL (this thread waits without it) before the group goes.
    """
    import gc

    import torch.distributed

    if not torch.distributed.is_initialized():
        return
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    gc.collect()  # the DDP reducer, in reference cycles, holds the group's last reference


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    processes = launched_world_size()
    if args.batch_size % processes:
        raise SystemExit(
            f"--batch-size {args.batch_size} does not split evenly over {processes} processes; pick a multiple"
        )
    _train(args, processes)  # returns first, so that the trainer and its DDP model are unreferenced
    _leave_process_group()


if __name__ == "__main__":
    main()
