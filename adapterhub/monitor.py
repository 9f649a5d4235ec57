"""What a training run reports while it runs: per-step loss, learning rate, gradient norm, throughput
(samples/s, tokens/s) and memory, to the console, an optional JSONL file and optional TensorBoard event
files; plus early stopping on a validation metric. How (``MonitorSettings``, ``EarlyStopping``) is set in
``adapterhub.settings``, with the other settings.

The training loop (``adapterhub.train``) measures; this module records and decides. Only the main rank
of a data-parallel run writes anything.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from adapterhub.errors import OptionError
from adapterhub.settings import EarlyStopping, MonitorSettings  # defined there (torch-free), for the CLI


@dataclass
class StepRecord:
    """One optimizer step, with every number already combined across ranks."""

    step: int
    epoch: int
    loss: float
    learning_rate: float
    grad_norm: float
    samples_per_s: float
    tokens_per_s: float
    memory_mb: float


def memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on ``device``, or this process's resident memory on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _this_process().memory_info().rss / 2**20


@functools.cache
def _this_process():
    """One psutil handle for the process, not a new one on every training step."""
    import psutil

    return psutil.Process()


class TrainingLog:
    """Writes step and eval records to stderr every ``log_every`` steps, JSONL and TensorBoard."""

    def __init__(self, settings: MonitorSettings, enabled: bool, write_line) -> None:
        self.settings, self.enabled, self._write_line = settings, enabled, write_line
        self._jsonl = None
        self._tensorboard = None
        if not enabled:
            return
        if settings.log_file:
            Path(settings.log_file).parent.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(settings.log_file, "a", encoding="utf-8")
        if settings.tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise OptionError(
                    "--tensorboard needs the tensorboard package: pip install 'adapterhub[tensorboard]'"
                ) from None
            self._tensorboard = SummaryWriter(settings.tensorboard_dir)

    def step(self, record: StepRecord) -> None:
        if not self.enabled:
            return
        values = asdict(record)
        self._emit({"event": "step", **values})
        if self._tensorboard is not None:
            for name in ("loss", "learning_rate", "grad_norm", "samples_per_s", "tokens_per_s", "memory_mb"):
                self._tensorboard.add_scalar(f"train/{name}", values[name], record.step)
        if record.step % max(1, self.settings.log_every) == 0:
            self._write_line(
                f"step {record.step}: loss={record.loss:.4f} lr={record.learning_rate:.3g} grad_norm={record.grad_norm:.3g} "
                f"{record.samples_per_s:.1f} samples/s {record.tokens_per_s:.0f} tokens/s memory={record.memory_mb:.0f}MiB"
            )

    def evaluation(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._emit({"event": "eval", "step": step, "epoch": epoch, **metrics})
        if self._tensorboard is not None:
            for name, value in metrics.items():
                self._tensorboard.add_scalar(f"eval/{name}", value, step)
        self._write_line(
            f"eval at step {step} (epoch {epoch}): " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        )

    def alert(self, message: str) -> None:
        if not self.enabled:
            return
        self._emit({"event": "alert", "message": message})
        self._write_line(f"warning: {message}")

    def _emit(self, values: dict[str, Any]) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(values, default=float) + "\n")
            self._jsonl.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def stderr_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # stdout stays clean for --json


class EarlyStopper:
    """Tracks the best value of the watched metric and keeps a CPU copy of the weights that scored it."""

    def __init__(self, rule: EarlyStopping, metrics: tuple[str, ...]) -> None:
        if rule.metric not in metrics:  # checked before training starts, not at the first evaluation
            raise OptionError(f"early stopping watches {rule.metric!r}, but evaluation gives {', '.join(metrics)}; "
                              "pass one of those to --early-stopping")  # fmt: skip
        self.rule = rule
        self.best: float | None = None
        self.best_step = 0
        self.best_metrics: dict[str, float] = {}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.evaluations_without_gain = 0

    def update(self, metrics: dict[str, float], step: int, model: torch.nn.Module) -> bool:
        """Record an evaluation; ``True`` when training should stop."""
        value = metrics[self.rule.metric]
        sign = -1.0 if self.rule.lower_is_better else 1.0
        if self.best is None or (math.isfinite(value) and sign * (value - self.best) > self.rule.min_delta):
            self.best, self.best_step, self.best_metrics = value, step, dict(metrics)
            self.best_state = {
                n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad
            }
            self.evaluations_without_gain = 0
            return False
        self.evaluations_without_gain += 1
        return self.evaluations_without_gain >= self.rule.patience

    def restore_best(self, model: torch.nn.Module) -> None:
        """Put the best weights back (the adapter saved is the one that scored best, not the last one)."""
        if self.best_state is None:
            return
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in self.best_state:
                    parameter.copy_(self.best_state[name])
