"""The router of a task sequence: which adapter serves an input.

Given a task id it is a lookup. Otherwise it routes from the input: the frozen base's features of the text
(``features.BaseFeatures``, no adapter active) against every task's prototypes; the task holding the most
similar prototype (cosine) wins, ties going to the earlier task. Everything it needs is in the registry
(``manifest["continual"]`` of each adapter tagged ``sequence-<name>``), so ``Router.from_registry`` rebuilds
it anywhere, and a task added later changes nothing about the tasks before it.

    router = Router.from_registry("tweets", base=load_base(MINILM, model_task="seq-cls", labels=[...]))
    router.ref_for("airline")          # 'tweets-airline@1'
    router.route(["my flight was delayed again"])   # ['tweets-airline@1']

The server builds one on its adapter pool (``adapterhub serve --router SEQUENCE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from adapterhub.adapters import check_base
from adapterhub.base import Base, load_base
from adapterhub.continual.features import BaseFeatures, decode_tensor
from adapterhub.continual.plan import sequence_tag
from adapterhub.errors import AdapterHubError
from adapterhub.manifest import Manifest
from adapterhub.model_tasks import TRAIN_DEFAULT
from adapterhub_registry import Registry


class UnknownTaskError(AdapterHubError):
    """A task id that the sequence does not have; the message lists the ones it has."""


@dataclass(frozen=True)
class RoutedTask:
    """One task of the sequence as the router knows it."""

    name: str
    position: int
    ref: str  # the exact adapter version, name@version
    labels: tuple[str, ...]
    prototypes: torch.Tensor  # (k, hidden), unit rows


@dataclass(frozen=True)
class Route:
    """Where one input went: the task, and the cosine similarity of its nearest prototype."""

    task: RoutedTask
    similarity: float


class Router:
    """Routes inputs of one sequence to its task adapters; see the module docstring."""

    def __init__(self, sequence: str, tasks: Sequence[RoutedTask], *, base_fingerprint: str, max_length: int,
                 model_task: str = TRAIN_DEFAULT, features: BaseFeatures | None = None) -> None:  # fmt: skip
        if not tasks:
            raise AdapterHubError(f"sequence {sequence!r} has no tasks to route to")
        self.sequence, self.base_fingerprint, self.max_length = sequence, base_fingerprint, max_length
        self.model_task = model_task
        self.tasks = sorted(tasks, key=lambda t: t.position)
        self.features = features
        self._by_name = {t.name: t for t in self.tasks}
        self._by_ref = {t.ref: t for t in self.tasks}
        self._prototypes = torch.cat([t.prototypes for t in self.tasks])  # (all prototypes, hidden)
        self._owner = torch.cat([torch.full((len(t.prototypes),), i) for i, t in enumerate(self.tasks)])

    @classmethod
    def from_registry(cls, sequence: str, registry: Registry | None = None, *, base=None) -> Router:
        """The router of ``sequence`` from the adapters tagged ``sequence-<sequence>``.

        ``base`` (a bare ``Base``, or an ``AdapterPool`` whose base is used with no adapter active) computes
        the features of inputs to route; without it, only ``ref_for`` (explicit task ids) works.
        """
        registry = registry or Registry()
        tagged = [(r, Manifest.from_dict(r.manifest)) for r in registry.list(tag=sequence_tag(sequence))]
        records = [(r, m) for r, m in tagged if m.continual is not None and m.continual.sequence == sequence]
        if not records:
            raise AdapterHubError(
                f"the registry at {registry.root} has no adapters of sequence {sequence!r} (tag {sequence_tag(sequence)}); "
                f"train it first: adapterhub continual train PLAN"
            )
        tasks, lengths, fingerprints, model_tasks = [], set(), set(), set()
        for record, manifest in records:
            entry = manifest.continual
            router = entry.router or {}
            prototypes = decode_tensor(router.get("prototypes") or {}, f"adapter {record.ref}")
            tasks.append(RoutedTask(entry.task, entry.position, record.ref, tuple(manifest.labels or ()), prototypes))
            lengths.add(router.get("max_length"))
            fingerprints.add(record.base_fingerprint)
            model_tasks.add(manifest.model_task or TRAIN_DEFAULT)  # continual plans default to it too
        if len(fingerprints) != 1 or len(lengths) != 1 or len(model_tasks) != 1:
            raise AdapterHubError(
                f"the adapters of sequence {sequence!r} were trained on different bases or settings "
                f"({', '.join(map(str, fingerprints))}); retrain them from one plan (adapterhub continual train PLAN --retrain)"
            )
        router = cls(
            sequence, tasks, base_fingerprint=fingerprints.pop(), max_length=lengths.pop(), model_task=model_tasks.pop()
        )
        if base is not None:
            router.bind(base)
        return router

    def bind(self, base) -> Router:
        """Compute input features with ``base`` (a bare ``Base`` or an ``AdapterPool``); it must be the base the
        prototypes were computed on, or similarities would compare different spaces."""
        bare = base if isinstance(base, Base) else base.base
        check_base(bare, self.base_fingerprint, f"router of sequence {self.sequence!r}")
        if isinstance(base, Base):
            self.features = BaseFeatures(base, max_length=self.max_length)
        else:
            self.features = BaseFeatures.of_pool(base, max_length=self.max_length)
        return self

    def load_base(self, path: str, quantize: str | None = None) -> Base:
        """Load the base at ``path`` bare for this sequence (its head sized like the tasks' heads) and bind to it."""
        labels = list(self.tasks[0].labels) if self.model_task == "seq-cls" else None
        base = load_base(path, model_task=self.model_task, quantize=quantize, labels=labels)
        self.bind(base)
        return base

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> RoutedTask:
        """The task called ``name``; an unknown one is an error listing the sequence's tasks."""
        if name not in self._by_name:
            raise UnknownTaskError(
                f"sequence {self.sequence!r} has no task {name!r}; its tasks are: {', '.join(self.names)}"
            )
        return self._by_name[name]

    def ref_for(self, name: str) -> str:
        """The adapter ref of task ``name`` (an explicit task id: no features needed)."""
        return self.task(name).ref

    def task_of(self, ref: str) -> RoutedTask | None:
        """The task whose adapter is ``ref`` (``name@version``), if it is one of this sequence's."""
        return self._by_ref.get(ref)

    def nearest(self, features: torch.Tensor) -> list[Route]:
        """The route of each row of ``features`` (unit rows, as ``BaseFeatures`` gives)."""
        similarity = features.float() @ self._prototypes.T  # (inputs, all prototypes)
        best = torch.full((len(features), len(self.tasks)), -2.0)
        best = best.scatter_reduce(1, self._owner.expand_as(similarity), similarity, reduce="amax")  # (inputs, tasks)
        values, winners = best.max(1)  # first maximum: ties go to the earlier task
        return [Route(self.tasks[i], v) for i, v in zip(winners.tolist(), values.tolist())]

    def routes(self, texts: Sequence[str]) -> list[Route]:
        """The route of each text, from the frozen base's features."""
        if self.features is None:
            raise AdapterHubError(
                "this router has no base to compute input features with: pass base= to Router.from_registry "
                "(or call bind(base)), or give an explicit task id"
            )
        return self.nearest(self.features.of_texts(texts))

    def route(self, texts: Sequence[str]) -> list[str]:
        """The adapter ref for each text."""
        return [r.task.ref for r in self.routes(texts)]
