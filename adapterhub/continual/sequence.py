"""Train a task sequence: one adapter per task on the same frozen base, each pushed to the registry.

Task ``t`` of sequence ``s`` becomes the registry adapter ``s-t``, tagged ``task-t`` and ``sequence-s``, with
its place in the sequence and its router prototypes in the manifest (``manifest["continual"]``), so the
router is rebuilt from the registry alone. A task whose adapter already exists, trained from the same data,
settings and base, is skipped: appending a task to a plan and running it again trains only the new task,
and no earlier adapter (or its prototypes) is ever touched. ``adapterhub continual train`` runs this.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adapterhub import adapters
from adapterhub.base import Base, load_base, resolve_placement
from adapterhub.continual.features import (
    FEATURES,
    BaseFeatures,
    encode_tensor,
    prototypes,
)
from adapterhub.continual.plan import SequencePlan, TaskPlan, sequence_tag, task_tag
from adapterhub.distributed import launched_as_main
from adapterhub.manifest import ContinualEntry, Manifest
from adapterhub.prepare import prepare
from adapterhub.settings import Placement
from adapterhub.workflow import TrainJob, push_trained, train_adapter
from adapterhub_registry import NotFoundError, Registry
from adapterhub_registry.records import AdapterRecord


@dataclass
class TaskRun:
    """What happened to one task: trained now (``trained``) or kept from an earlier run, and its adapter."""

    task: str
    position: int
    record: AdapterRecord
    trained: bool
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"task": self.task, "position": self.position, "adapter": self.record.ref, "trained": self.trained,
                "tags": list(self.record.tags), "metrics": self.record.metrics, "seconds": round(self.seconds, 2)}  # fmt: skip


def load_plan_base(plan: SequencePlan, placement: Placement | None = None) -> Base:
    """The plan's frozen base, loaded bare (the head of the first task's label count for seq-cls), on
    ``placement``'s device and dtype."""
    labels = plan.labels[plan.tasks[0].name] if plan.model_task == "seq-cls" else None
    device, dtype = resolve_placement(**vars(placement or Placement()))
    return load_base(
        plan.base, model_task=plan.model_task, quantize=plan.quantize, labels=labels, device=device, dtype=dtype
    )


def feature_length(plan: SequencePlan) -> int:
    """Tokens per input for routing features: the length the adapters were trained on."""
    return plan.settings.max_length if plan.model_task == "seq-cls" else plan.settings.block_size


def task_digest(plan: SequencePlan, task: TaskPlan, base_fingerprint: str) -> str:
    """What decides a task's adapter: data (by content), method, options, settings, base, place, router size."""
    options = adapters.make_options(plan.method, plan.options)
    identity = {
        "data": task.data.recorded(), "position": task.position, "model_task": plan.model_task, "method": plan.method,
        "options": dataclasses.asdict(options), "settings": dataclasses.asdict(plan.settings),
        "quantize": plan.quantize, "base": base_fingerprint, "prototypes": plan.prototypes,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def existing_adapter(registry: Registry, plan: SequencePlan, task: str) -> AdapterRecord | None:
    """The version of the task's adapter the sequence uses now (its task tag), if there is one."""
    try:
        return registry.resolve(f"{plan.adapter_name(task)}:{task_tag(task)}")
    except NotFoundError:
        return None


def train_sequence(
    plan: SequencePlan,
    *,
    registry: Registry | None = None,
    retrain: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = lambda line: None,
    placement: Placement | None = None,
) -> list[TaskRun]:
    """Train every task of ``plan`` in order that has no up-to-date adapter yet (all of them with ``retrain``).

    Under torchrun / accelerate launch each task trains data-parallel; only rank 0 computes the router
    prototypes and pushes, and only rank 0 gets the list of runs (the other ranks get an empty list).
    """
    registry = registry or Registry()
    if not launched_as_main():
        log = lambda line: None  # noqa: E731 - rank 0 reports for the whole run
    placement = placement or Placement()
    base = load_plan_base(plan, placement)  # kept bare: prototypes are features of the frozen base
    features = BaseFeatures(base, max_length=feature_length(plan))
    runs: list[TaskRun] = []
    for task in plan.tasks:
        where = f"[{task.position + 1}/{len(plan.tasks)}] {task.name}"
        digest = task_digest(plan, task, base.fingerprint_id)
        current = existing_adapter(registry, plan, task.name)
        if current is not None and not retrain and _digest_of(current) == digest:
            log(f"{where}: up to date ({current.ref}), not retrained")
            runs.append(TaskRun(task.name, task.position, current, trained=False))
            continue
        log(f"{where}: training {plan.method} on {task.data.path}")
        started = time.perf_counter()
        record = _train_task(plan, task, digest, base, features, registry, progress, placement)
        if record is None:  # not the main rank of a data-parallel run
            continue
        runs.append(TaskRun(task.name, task.position, record, trained=True, seconds=time.perf_counter() - started))
        shown = ", ".join(f"{k} {v:.4f}" for k, v in record.metrics.items() if k in ("accuracy", "f1_macro", "loss"))
        log(f"{where}: pushed {record.ref} ({shown}) in {runs[-1].seconds:.1f} s")
    return runs


def _train_task(plan: SequencePlan, task: TaskPlan, digest: str, base: Base, features: BaseFeatures,
                registry: Registry, progress: bool, placement: Placement) -> AdapterRecord | None:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix=f"adapterhub-{plan.adapter_name(task.name)}-") as output:
        job = TrainJob(plan.base, plan.method, task.data, plan.model_task, dict(plan.options), plan.settings,
                       plan.quantize, output, progress=progress, placement=placement)  # fmt: skip
        outcome = train_adapter(job)  # not pushed by the job: the push below adds the sequence's manifest entry
        if not outcome.is_main:
            return None
        continual = ContinualEntry(
            plan.sequence, task.name, task.position, digest, _router_entry(plan, task, base, features)
        )
        tags = [task_tag(task.name), sequence_tag(plan.sequence)]
        return push_trained(registry, plan.adapter_name(task.name), outcome, tags=tags, continual=continual)


def _digest_of(record: AdapterRecord) -> str | None:
    continual = Manifest.from_dict(record.manifest).continual
    return continual.digest if continual is not None else None


def _router_entry(plan: SequencePlan, task: TaskPlan, base: Base, features: BaseFeatures) -> dict[str, Any]:
    """The task's prototypes: k-means centroids of the base features of its training examples."""
    labels = plan.labels.get(task.name)
    data = prepare(base, task.data, plan.settings, labels)
    train_features = features.of_batches(data.make_train(list(range(data.n_train))))
    centroids = prototypes(train_features, plan.prototypes, plan.settings.seed)
    return {"features": FEATURES, "max_length": features.max_length, "examples": data.n_train,
            "prototypes": encode_tensor(centroids)}  # fmt: skip
