"""The training loop: AdamW on the adapter's parameters only, linear warm-up/decay, gradient clipping,
the method's per-step hook (e.g. rank schedules), evaluation after every epoch (or every N steps) with
early stopping, and a monitor (loss, learning rate, gradient norm, throughput, memory; alert rules).

Deliberately a short plain-torch loop rather than `transformers.Trainer`: a method plugin's
``on_train_step`` must run after each optimizer step, and the loop must stay readable top to bottom.
Data parallelism comes from torchrun / accelerate (``adapterhub.distributed``); the loop only shares each
global batch between ranks and combines the numbers it reports. An optimizer step sums the gradients of
``grad_accum`` micro-batches; a base in bfloat16/float16 runs under autocast while the adapter's weights (and
the optimizer's state) stay float32, float16 with a gradient scaler. With a ``CheckpointStore`` the loop writes
its whole state every N steps (``adapterhub.checkpoints``) and can continue from such a checkpoint exactly.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from adapterhub.alerts import AlertChecker, TrainingStopped, merge_rules
from adapterhub.checkpoints import Checkpoint, CheckpointStore
from adapterhub.distributed import Distributed
from adapterhub.errors import OptionError
from adapterhub.evaluation import evaluate_batches
from adapterhub.model_tasks import model_task as model_task_named
from adapterhub.monitor import EarlyStopper, MonitorSettings, StepRecord, TrainingLog, memory_mb, stderr_line
from adapterhub.settings import TrainSettings


@dataclass
class TrainResult:
    """History of evaluations (with the mean train loss since the previous one), the metrics of the adapter
    kept (the last evaluation, or the best one under early stopping), and what the monitor saw."""

    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    steps: int = 0
    skipped_steps: int = 0  # steps dropped by a `nan=warn` alert
    stopped_early: bool = False
    best_step: int | None = None
    alerts: list[str] = field(default_factory=list)
    samples_per_s: float = 0.0
    tokens_per_s: float = 0.0
    peak_memory_mb: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def total_steps(n_train: int, settings: TrainSettings) -> int:
    """Optimizer steps of a run over ``n_train`` examples (the last batch of an epoch may be short)."""
    return math.ceil(n_train / settings.step_batch) * settings.epochs


def _lr_lambda(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def _loss_units(batch: dict[str, torch.Tensor], model_task: str, class_weights: torch.Tensor | None = None) -> float:
    """What the model's mean loss averages over: examples (classifier; their summed class weights under
    weighted cross-entropy) or predicted tokens (causal LM)."""
    if class_weights is not None:
        return float(class_weights[batch["labels"]].sum())
    if model_task == "seq-cls":
        return len(batch["labels"])
    return int((batch["labels"][:, 1:] != -100).sum())


def _global_batches(n_train: int, settings: TrainSettings) -> Iterator[tuple[int, list[int], bool]]:
    """``(epoch, rows, last_of_epoch)`` for every optimizer step; the order is reshuffled each epoch."""
    generator = torch.Generator().manual_seed(settings.seed)
    size = settings.step_batch
    for epoch in range(1, settings.epochs + 1):
        order = torch.randperm(n_train, generator=generator).tolist()
        for start in range(0, n_train, size):
            yield epoch, order[start : start + size], start + size >= n_train


def train(
    model: torch.nn.Module,
    make_train_batches: Callable[[list[int]], Iterator[dict]],
    n_train: int,
    make_eval_batches: Callable[[], Iterator[dict]] | None,
    model_task: str,
    settings: TrainSettings,
    on_step: Callable[[torch.nn.Module, int, int], None] | None = None,
    progress: bool = True,
    *,
    monitor: MonitorSettings | None = None,
    distributed: Distributed | None = None,
    class_weights: list[float] | None = None,
    dtype: torch.dtype = torch.float32,
    checkpoints: CheckpointStore | None = None,
    resume_from: Checkpoint | None = None,
) -> TrainResult:
    """Train the trainable (adapter) parameters of ``model``.

    ``make_train_batches(rows)`` yields batches of at most ``settings.batch_size`` of the examples ``rows``;
    ``make_eval_batches()`` yields the held-out batches. Raises ``TrainingStopped`` when a stop alert fires.
    Under early stopping the best weights are put back before returning. ``class_weights`` (a classifier's,
    one per label) make the loss a weighted cross-entropy instead of the model's own mean. ``dtype`` is the
    base's: bfloat16/float16 run the forward under autocast. ``checkpoints`` writes the run's state every
    ``checkpoints.every`` steps; ``resume_from`` continues from one such checkpoint.
    """
    run = _TrainingRun(model, make_eval_batches, model_task, settings, on_step, progress, monitor or MonitorSettings(),
                       distributed or Distributed.single(), total_steps(n_train, settings), class_weights, dtype)  # fmt: skip
    eval_every = run.monitor.eval_every
    done = run.restore(resume_from) if resume_from is not None else 0  # global batches already trained on
    try:
        for position, (epoch, rows, last_of_epoch) in enumerate(_global_batches(n_train, settings), start=1):
            if position <= done:
                continue
            stepped = run.step(epoch, rows, make_train_batches)
            due = (stepped and run.result.steps % eval_every == 0) if eval_every else last_of_epoch
            if due and run.evaluate(epoch):
                run.result.stopped_early = True
                break
            if checkpoints is not None and stepped and run.result.steps % checkpoints.every == 0:
                run.write_checkpoint(checkpoints, position)
        else:
            if eval_every and run.losses:  # the steps after the last periodic evaluation
                run.evaluate(settings.epochs)
    finally:
        run.close()
    return run.finish()


def _rng_state() -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}  # fmt: skip


class _TrainingRun:
    """The state of one call to ``train``: optimizer, schedule, monitor, alert rules and early stopping."""

    def __init__(self, model, make_eval_batches, model_task, settings, on_step, progress, monitor, dist, n_steps,
                 class_weights: list[float] | None = None, dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
        self.model, self.make_eval_batches, self.model_task, self.settings = (
            model,
            make_eval_batches,
            model_task,
            settings,
        )
        self.on_step, self.monitor, self.dist, self.n_steps = on_step, monitor, dist, n_steps
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        if not self.parameters:
            raise ValueError("the model has no trainable parameters: attach an adapter first")
        for parameter in self.parameters:  # float32 master weights, whatever the base's dtype
            if parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()
        self.wrapped = dist.prepare(model)  # may move the model to this rank's GPU
        self.device = self.parameters[0].device
        self.dtype = dtype
        # float16's narrow range needs the loss scaled up in backward and the gradients checked for overflow
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=dtype == torch.float16)
        self.wrapped.train()
        self.optimizer = torch.optim.AdamW(
            self.parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(n_steps, settings.warmup_ratio))
        self.bar = tqdm(
            total=n_steps, desc="train", unit="step", disable=not (progress and dist.is_main), dynamic_ncols=True
        )
        self.log = TrainingLog(
            monitor, dist.is_main, (lambda line: self.bar.write(line, file=sys.stderr)) if progress else stderr_line
        )
        self.checker = AlertChecker(merge_rules(monitor.alerts))
        self.stopper = (
            EarlyStopper(monitor.early_stopping, model_task_named(model_task).metrics)
            if monitor.early_stopping
            else None
        )
        if self.stopper is not None and make_eval_batches is None:
            raise OptionError("early stopping needs held-out data, and this split has none; raise --test-split")
        self.result = TrainResult()
        self.class_weights = None if class_weights is None else torch.tensor(class_weights, device=self.device)
        self.losses: list[float] = []  # step losses since the last evaluation
        self.samples = self.tokens = self.seconds = 0.0
        self.started = time.perf_counter()

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward of a bfloat16/float16 base in its dtype; nothing changes for float32."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def step(self, epoch: int, rows: list[int], make_train_batches) -> bool:
        """One optimizer step on the global batch ``rows`` (``grad_accum`` micro-batches of ``batch_size``), of
        each of which this rank trains on its share; ``False`` when the step was skipped (a non-finite loss
        under ``nan=warn``)."""
        started = time.perf_counter()
        size = self.settings.batch_size
        micro_rows = [rows[start : start + size] for start in range(0, len(rows), size)]
        shares = [self.dist.shard(micro) for micro in micro_rows]
        # a rank left without rows still joins DDP, on one row whose loss counts for nothing
        batches = [{k: v.to(self.device) for k, v in next(iter(make_train_batches(mine or micro[:1]))).items()}
                   for mine, micro in zip(shares, micro_rows)]  # fmt: skip
        units = [
            _loss_units(batch, self.model_task, self.class_weights) if mine else 0
            for batch, mine in zip(batches, shares)
        ]
        (global_units,) = self.dist.sum([sum(units)])
        loss_sum = 0.0
        for index, (batch, mine, micro_units) in enumerate(zip(batches, shares, units)):
            last = index == len(batches) - 1
            # DDP all-reduces the gradients once per step, in the last micro-batch's backward
            syncing = contextlib.nullcontext() if last or not self.dist.active else self.wrapped.no_sync()
            with syncing:
                with self.autocast():
                    loss = self._loss(batch)
                loss_value = loss.item()
                (non_finite,) = self.dist.sum([float(bool(mine) and not math.isfinite(loss_value))])
                if non_finite:  # decided on numbers all ranks share, before backward starts DDP's all-reduce
                    self._skip_or_stop(loss_value)
                    return False
                # scaled so that the (DDP-averaged) gradient is that of the whole global batch's mean loss
                factor = self.dist.world_size * micro_units / global_units if global_units else 1.0
                self.scaler.scale(loss * factor if factor != 1 else loss).backward()
            loss_sum += loss_value * micro_units
        self.scaler.unscale_(self.optimizer)
        grad_norm = float(self.dist.clip_grad_norm(self.parameters, self.settings.grad_clip))
        self.scaler.step(self.optimizer)  # skipped by the scaler when float16 gradients overflowed
        self.scaler.update()
        learning_rate = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.result.steps += 1
        if self.on_step is not None:  # before zero_grad: rank schedules (AdaLoRA) read the gradients
            self.on_step(self.model, self.result.steps, self.n_steps)
        self.optimizer.zero_grad(set_to_none=True)
        tokens = sum(int(batch["attention_mask"].sum()) for batch, mine in zip(batches, shares) if mine)
        loss_sum, samples, tokens = self.dist.sum([loss_sum, sum(map(len, shares)), tokens])
        seconds, memory = self.dist.max([time.perf_counter() - started, memory_mb(self.device)])
        record = StepRecord(self.result.steps, epoch, loss_sum / global_units, learning_rate, grad_norm,
                            samples / seconds, tokens / seconds, memory)  # fmt: skip
        self.samples, self.tokens, self.seconds = self.samples + samples, self.tokens + tokens, self.seconds + seconds
        self.result.peak_memory_mb = max(self.result.peak_memory_mb, memory)
        self.losses.append(record.loss)
        self.log.step(record)
        self.bar.update(1)
        self.bar.set_postfix(epoch=epoch, loss=f"{record.loss:.4f}", samples_s=f"{record.samples_per_s:.1f}")
        for alert in self.checker.check(record.step, record.loss, grad_norm, record.samples_per_s, memory):
            self._raise_or_warn(alert.rule.action, alert.message)
        return True

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's own loss, or with class weights the weighted mean cross-entropy of the batch's rows."""
        if self.class_weights is None:
            return self.wrapped(**batch).loss
        logits = self.wrapped(**{k: v for k, v in batch.items() if k != "labels"}).logits  # (batch, classes)
        return torch.nn.functional.cross_entropy(logits.float(), batch["labels"], weight=self.class_weights)

    def _skip_or_stop(self, loss_value: float) -> None:
        attempted = self.result.steps + self.result.skipped_steps + 1
        alert = self.checker.nonfinite_loss(attempted, loss_value if not math.isfinite(loss_value) else math.nan)
        if alert is not None:
            self._raise_or_warn(alert.rule.action, alert.message + "; skipping such steps (the result counts them)")
        self.result.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.bar.update(1)

    def _raise_or_warn(self, action: str, message: str) -> None:
        if action == "stop":
            raise TrainingStopped(
                f"{message}. Training stopped at step {self.result.steps}; nothing was saved or pushed."
            )
        self.log.alert(message)

    def evaluate(self, epoch: int) -> bool:
        """Evaluate and record; ``True`` when early stopping ends the run."""
        record = {"epoch": epoch, "step": self.result.steps, "train_loss": sum(self.losses) / max(len(self.losses), 1)}
        self.losses.clear()
        if self.make_eval_batches is not None:
            with self.autocast():
                metrics = evaluate_batches(self.model, self.make_eval_batches(), self.model_task, self.dist)
            record.update(metrics)
            self.log.evaluation(self.result.steps, epoch, metrics)
        self.result.history.append(record)
        return self.stopper is not None and self.stopper.update(metrics, self.result.steps, self.model)

    def write_checkpoint(self, store: CheckpointStore, position: int) -> None:
        """Write the whole state after ``position`` global batches (main rank only; the others wait for it)."""
        rng = self.dist.gather(_rng_state())  # every rank's: each draws its own dropout masks
        if self.dist.is_main:
            adapter = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
            store.write(self.result.steps, adapter, {**self._state(position), "rng": rng})
        self.dist.barrier()

    def _state(self, position: int) -> dict:
        # the alert checker's and early stopper's own fields, less their rules (given again by the command line)
        monitors = {"checker": {k: v for k, v in vars(self.checker).items() if k != "rules"},
                    "stopper": {k: v for k, v in vars(self.stopper).items() if k != "rule"} if self.stopper else None}  # fmt: skip
        return {
            "position": position, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "result": dict(vars(self.result)), "losses": list(self.losses),
            "counters": (self.samples, self.tokens, self.seconds), "elapsed": time.perf_counter() - self.started,
            **monitors,
        }  # fmt: skip

    def restore(self, checkpoint: Checkpoint) -> int:
        """Put back the state ``checkpoint`` holds; returns how many global batches it had trained on."""
        tensors = checkpoint.adapter()
        names = {name for name, p in self.model.named_parameters() if p.requires_grad}
        if names != set(tensors):
            raise OptionError(f"checkpoint {checkpoint.path} holds other adapter weights than this run trains "
                              f"({len(tensors)} tensors, {len(names)} here): pass another --checkpoint-dir")  # fmt: skip
        with torch.no_grad():
            for name, parameter in self.model.named_parameters():
                if name in tensors:
                    parameter.copy_(tensors[name])
        state = checkpoint.state()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.result = TrainResult(**state["result"])
        self.losses = state["losses"]
        self.samples, self.tokens, self.seconds = state["counters"]
        self.started = time.perf_counter() - state["elapsed"]
        vars(self.checker).update(state["checker"])
        if self.stopper is not None and state["stopper"] is not None:
            vars(self.stopper).update(state["stopper"])
        rng = state["rng"][self.dist.rank]  # the checkpoint's run had this world size (its identity says so)
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.bar.update(state["position"])
        return state["position"]

    def close(self) -> None:
        self.bar.close()
        self.log.close()
        self.result.alerts = [alert.message for alert in self.checker.fired]

    def finish(self) -> TrainResult:
        result = self.result
        result.train_seconds = time.perf_counter() - self.started
        result.samples_per_s = self.samples / max(self.seconds, 1e-9)
        result.tokens_per_s = self.tokens / max(self.seconds, 1e-9)
        if self.stopper is not None and self.stopper.best_state is not None:
            self.stopper.restore_best(self.model)
            result.best_step, result.metrics = self.stopper.best_step, dict(self.stopper.best_metrics)
        elif result.history:
            result.metrics = {k: v for k, v in result.history[-1].items() if k not in ("epoch", "step")}
        return result
