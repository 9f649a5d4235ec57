"""Evaluate a trained sequence on every task's held-out split: with oracle task ids and through the router.

Oracle: each task's adapter on its own held-out split, through ``evaluate_batches`` with the batches
``eval``/training build, so an adapter's figures equal those recorded when it was trained (adapters never
change after training: zero forgetting by construction, and this is where it is checked). Routed: every
held-out example goes to the adapter the router picks from the frozen base's features; a prediction is
right when the picked adapter's label *name* equals the true one (an adapter of the wrong task can still
name the right sentiment). Router accuracy: how often the picked task is the true one.
``adapterhub continual eval`` and the continual benchmark call ``evaluate_sequence``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

from adapterhub.adapters import check_base
from adapterhub.base import Base
from adapterhub.batches import classification_batches
from adapterhub.continual.plan import SequencePlan, TaskPlan
from adapterhub.continual.router import Route, Router
from adapterhub.continual.sequence import existing_adapter, load_plan_base
from adapterhub.data import ClassificationData
from adapterhub.errors import AdapterHubError
from adapterhub.evaluation import evaluate_batches
from adapterhub.manifest import Manifest
from adapterhub.prepare import prepare
from adapterhub.runtime.fallback import PeftAttached
from adapterhub_registry import Registry
from adapterhub_registry.records import AdapterRecord


@dataclass
class TaskEvaluation:
    task: str
    adapter: str
    examples: int
    oracle: dict  # the task's own adapter on its held-out split (evaluate_batches metrics)
    router_accuracy: float  # fraction of its examples routed to it
    routed_accuracy: float | None = None  # seq-cls: accuracy with the routed adapters' predictions
    routed_to: dict[str, int] = field(default_factory=dict)  # task -> examples of this task routed there

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SequenceEvaluation:
    sequence: str
    tasks: list[TaskEvaluation]

    def average(self, metric: str = "accuracy") -> float:
        """Mean over tasks of the oracle ``metric``."""
        return statistics.fmean(t.oracle[metric] for t in self.tasks)

    @property
    def average_routed(self) -> float | None:
        values = [t.routed_accuracy for t in self.tasks]
        return None if None in values else statistics.fmean(values)

    @property
    def router_accuracy(self) -> float:
        """Over all held-out examples of all tasks."""
        return sum(t.router_accuracy * t.examples for t in self.tasks) / sum(t.examples for t in self.tasks)

    def to_dict(self) -> dict:
        metric = "accuracy" if "accuracy" in self.tasks[0].oracle else "loss"
        return {"sequence": self.sequence, "tasks": [t.to_dict() for t in self.tasks], f"average_oracle_{metric}": self.average(metric),
                "average_routed_accuracy": self.average_routed, "router_accuracy": self.router_accuracy}  # fmt: skip


def evaluate_sequence(plan: SequencePlan, registry: Registry | None = None) -> SequenceEvaluation:
    """Evaluate the adapters of ``plan``'s tasks (as tagged in the registry) on the plan's data."""
    registry = registry or Registry()
    base = load_plan_base(plan)
    router = Router.from_registry(plan.sequence, registry, base=base)
    prepared = {t.name: prepare(base, t.data, plan.settings, plan.labels.get(t.name)) for t in plan.tasks}
    records = {t.name: _trained_adapter(plan, t, registry, base, prepared[t.name].source.sha256) for t in plan.tasks}
    for name, data in prepared.items():
        if data.make_eval is None:
            raise AdapterHubError(
                f"task {name!r}: its data gives no held-out examples to evaluate; raise its test_split"
            )
    # Routing first, on the bare base: no adapter may be attached while its features are computed.
    routes = {name: router.nearest(router.features.of_batches(data.make_eval())) for name, data in prepared.items()}
    tests = {name: data.test_set for name, data in prepared.items() if data.test_set is not None}
    predicted: dict[str, dict[int, str]] = {name: {} for name in prepared}  # task -> example -> label name
    attached = PeftAttached(base)
    try:
        evaluations = {}
        for task in plan.tasks:
            record, tensors = registry.load(records[task.name].ref)
            model = attached.attach(record.ref, record.peft_config, tensors, record.manifest)
            evaluations[task.name] = evaluate_batches(model, prepared[task.name].make_eval(), plan.model_task)
            labels = Manifest.from_dict(record.manifest).labels
            for source, test in tests.items():  # the examples of every task that the router sent here
                rows = [i for i, r in enumerate(routes[source]) if r.task.name == task.name]
                for row, index in zip(rows, _predict(model, base, test.subset(rows), plan.settings)):
                    predicted[source][row] = labels[index]
    finally:
        attached.detach()
    return SequenceEvaluation(plan.sequence, [
        _task_evaluation(task.name, records[task.name].ref, evaluations[task.name], routes[task.name],
                         tests.get(task.name), predicted[task.name])
        for task in plan.tasks
    ])  # fmt: skip


def _trained_adapter(
    plan: SequencePlan, task: TaskPlan, registry: Registry, base: Base, data_sha256: str
) -> AdapterRecord:
    """The task's adapter, checked to come from the plan's data file (so the held-out split is the same) and base."""
    record = existing_adapter(registry, plan, task.name)
    if record is None:
        raise AdapterHubError(
            f"task {task.name!r} of the plan has no adapter in {registry.root}; run adapterhub continual train PLAN"
        )
    if Manifest.from_dict(record.manifest).data_sha256 != data_sha256:
        raise AdapterHubError(
            f"task {task.name!r}: {task.data.path} is not the file {record.ref} was trained on (sha256 differs), "
            f"so its held-out split would differ; point the plan at that file or retrain the task"
        )
    check_base(base, record.base_fingerprint, record.ref)
    return record


@torch.no_grad()
def _predict(model, base, data: ClassificationData, settings) -> list[int]:
    """Predicted label index of each text (the batches as the held-out evaluation builds them)."""
    if not data.texts:
        return []
    model.eval()
    device = base.model.get_input_embeddings().weight.device
    predictions: list[int] = []
    for batch in classification_batches(data, base.tokenizer, settings.eval_batch_size, settings.max_length):
        logits = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits
        predictions.extend(logits.argmax(-1).tolist())
    return predictions


def _task_evaluation(name: str, ref: str, oracle: dict, routes: list[Route], test: ClassificationData | None,
                     predicted: dict[int, str]) -> TaskEvaluation:  # fmt: skip
    routed_to: dict[str, int] = {}
    for route in routes:
        routed_to[route.task.name] = routed_to.get(route.task.name, 0) + 1
    evaluation = TaskEvaluation(
        name, ref, len(routes), oracle, routed_to.get(name, 0) / len(routes), routed_to=routed_to
    )
    if test is not None:
        truth = [test.label_names[label] for label in test.labels]
        evaluation.routed_accuracy = sum(predicted[i] == truth[i] for i in range(len(truth))) / len(truth)
    return evaluation
