"""The training loop: AdamW on the adapter's parameters only, linear warm-up/decay, gradient clipping,
a progress bar, evaluation after every epoch and the method's per-step hook (e.g. rank schedules).

Deliberately a short plain-torch loop rather than `transformers.Trainer`: a method plugin's
``on_train_step`` must run after each optimizer step, and the loop must stay readable top to bottom.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

from adapterhub.evaluation import evaluate_batches


@dataclass
class TrainSettings:
    """Hyper-parameters of one training run."""

    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    max_length: int = 128
    block_size: int = 128
    eval_batch_size: int = 64
    seed: int = 0


@dataclass
class TrainResult:
    """Per-epoch history (train loss + eval metrics), the last eval metrics and the wall-clock training time."""

    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    steps: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def total_steps(n_train: int, settings: TrainSettings) -> int:
    """Optimizer steps of a run over ``n_train`` examples (the last batch of an epoch may be short)."""
    return math.ceil(n_train / settings.batch_size) * settings.epochs


def _lr_lambda(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def train(
    model: torch.nn.Module,
    make_train_batches: Callable[[list[int]], Iterator[dict]],
    n_train: int,
    make_eval_batches: Callable[[], Iterator[dict]] | None,
    task: str,
    settings: TrainSettings,
    on_step: Callable[[torch.nn.Module, int, int], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train the trainable (adapter) parameters of ``model``.

    ``make_train_batches(order)`` yields batches for the examples in ``order`` (reshuffled every epoch with
    a generator seeded from ``settings.seed``); ``make_eval_batches()`` yields the held-out batches.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the model has no trainable parameters: attach an adapter first")
    steps_per_epoch = math.ceil(n_train / settings.batch_size)
    n_steps = total_steps(n_train, settings)
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(n_steps, settings.warmup_ratio))
    generator = torch.Generator().manual_seed(settings.seed)
    device = parameters[0].device
    result = TrainResult()
    started = time.perf_counter()
    bar = tqdm(total=n_steps, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = torch.randperm(n_train, generator=generator).tolist()
        loss_sum = 0.0
        for batch in make_train_batches(order):
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training loss became {loss_value} at step {result.steps + 1}; lower the learning rate")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
            optimizer.step()
            scheduler.step()
            result.steps += 1
            if on_step is not None:  # before zero_grad: rank schedules (AdaLoRA) read the gradients
                on_step(model, result.steps, n_steps)
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss_value
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss_value:.4f}")
        record = {"epoch": epoch, "train_loss": loss_sum / steps_per_epoch}
        if make_eval_batches is not None:
            record.update(evaluate_batches(model, make_eval_batches(), task))
            summary = ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch")
            bar.write(f"epoch {epoch}: {summary}", file=sys.stderr)  # stdout stays clean for --json
        result.history.append(record)
    bar.close()
    result.train_seconds = time.perf_counter() - started
    result.metrics = {k: v for k, v in result.history[-1].items() if k != "epoch"}
    return result
