"""The task-sequence plan: which tasks, in which order, trained how; read from a JSON or TOML file.

A plan names the sequence, the frozen base, the adapter method with its options and training settings
shared by every task, and the tasks in order, each with the data options of ``DataSpec``. Everything is
validated when the plan is read, so a typo or a missing file fails before the first minute of training,
with a message naming the task and what to change. ``adapterhub continual train|eval`` and the continual
benchmark read plans through ``load_plan`` (a file) or ``parse_plan`` (a dict).

Example (JSON; relative paths are relative to the plan file; the base and a task's path may also be packaged
names, ``"base": "minilm"``, ``"path": "tweets"``, see ``adapterhub.packaged``)::

    {"sequence": "tweets", "base": "models/minilm", "method": "lora", "options": {"r": 8},
     "settings": {"epochs": 1, "batch_size": 32, "learning_rate": 0.002, "max_length": 48},
     "data": {"label_column": "sentiment", "encoding": "latin-1", "dedupe": true},
     "tasks": [{"name": "airline", "path": "airline.csv", "max_samples": 800},
               {"name": "apple", "path": "apple.csv"}]}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterhub import adapters, packaged, plugins
from adapterhub.errors import AdapterHubError, OptionError
from adapterhub.model_tasks import NAMES as MODEL_TASKS
from adapterhub.model_tasks import TRAIN_DEFAULT
from adapterhub.options import build_options
from adapterhub.prepare import labels_of
from adapterhub.settings import DataSpec, TrainSettings
from adapterhub_registry import InvalidNameError
from adapterhub_registry.names import validate_name

AUTO = "auto"  # the task id that asks the server to route from the input, so no task may be called that
DATA_KEYS = tuple(f.name for f in dataclasses.fields(DataSpec))
PLAN_KEYS = ("sequence", "base", "model_task", "method", "options", "settings", "quantize", "data", "router", "tasks")
ROUTER_KEYS = ("prototypes",)


class PlanError(OptionError):
    """A plan that cannot be run as written; the message names the task and what to change."""


@dataclass(frozen=True)
class TaskPlan:
    """One task of the sequence: its name, its position (0 first) and where its data is."""

    name: str
    position: int
    data: DataSpec


@dataclass
class SequencePlan:
    """A validated plan; ``tasks`` in training order. ``model_task`` is the base's head (seq-cls or causal-lm)."""

    sequence: str
    base: str
    method: str
    tasks: list[TaskPlan]
    options: dict[str, Any] = field(default_factory=dict)
    settings: TrainSettings = field(default_factory=TrainSettings)
    model_task: str = TRAIN_DEFAULT
    quantize: str | None = None
    prototypes: int = 4  # k-means centroids per task for the router
    labels: dict[str, list[str]] = field(default_factory=dict)  # task -> its label names (seq-cls)

    def adapter_name(self, task: str) -> str:
        return adapter_name(self.sequence, task)

    def prefix(self, count: int) -> SequencePlan:
        """The same plan with only its first ``count`` tasks (the sequence as it was after task ``count``)."""
        kept = self.tasks[:count]
        return dataclasses.replace(
            self, tasks=kept, labels={t.name: self.labels[t.name] for t in kept if t.name in self.labels}
        )


def adapter_name(sequence: str, task: str) -> str:
    """The registry name of a task's adapter."""
    return f"{sequence}-{task}"


def task_tag(task: str) -> str:
    """The tag marking the version of ``<sequence>-<task>`` that the sequence uses."""
    return f"task-{task}"


def sequence_tag(sequence: str) -> str:
    """The tag every adapter of a sequence carries, so ``Registry.list(tag=...)`` finds them all at once."""
    return f"sequence-{sequence}"


def load_plan(path: str | Path) -> SequencePlan:
    """Read and validate a plan file (``.json``, or ``.toml`` on Python 3.11+)."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"plan file {str(path)!r} not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:
                raise PlanError(f"{path}: TOML plans need Python 3.11+ (tomllib); write the plan as JSON") from None
            raw = tomllib.loads(text)
        else:
            raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError
        raise PlanError(f"{path}: not valid TOML ({exc})") from None
    return parse_plan(raw, path.parent)


def parse_plan(raw: Any, root: str | Path = ".") -> SequencePlan:
    """Validate a plan given as a dict; relative paths (base, data) are resolved against ``root``."""
    if not isinstance(raw, dict):
        raise PlanError(f"a plan is a table/object with keys {', '.join(PLAN_KEYS)}; got {type(raw).__name__}")
    _no_unknown(raw, PLAN_KEYS, "the plan")
    for key in ("sequence", "base", "method", "tasks"):
        if key not in raw:
            raise PlanError(f"the plan has no {key!r}; it needs sequence, base, method and tasks")
    root = Path(root)
    sequence = _valid_name(raw["sequence"], "the plan's sequence name")
    base = _resolve(raw["base"], root, packaged.BASE)
    if not base.exists():
        raise PlanError(
            f"base model {str(base)!r} not found (relative paths are relative to the plan file's directory)"
        )
    model_task = raw.get("model_task", TRAIN_DEFAULT)
    if model_task not in MODEL_TASKS:
        raise PlanError(f"model_task {model_task!r} is unknown; choose one of: {', '.join(MODEL_TASKS)}")
    options = dict(raw.get("options") or {})
    try:
        adapters.make_options(raw["method"], options)  # unknown method, option or quantizer: fail now, naming it
        if raw.get("quantize") is not None:
            plugins.catalog().quantizer(raw["quantize"])
    except AdapterHubError as exc:
        raise PlanError(f"the plan's method, options or quantize: {exc}") from None
    settings = _filled(TrainSettings, dict(raw.get("settings") or {}), "the plan's settings")
    router = dict(raw.get("router") or {})
    _no_unknown(router, ROUTER_KEYS, "the plan's router")
    prototypes = router.get("prototypes", 4)
    if not isinstance(prototypes, int) or prototypes < 1:
        raise PlanError(f"router.prototypes must be a positive integer (centroids per task), got {prototypes!r}")
    shared = dict(raw.get("data") or {})
    _no_unknown(shared, tuple(k for k in DATA_KEYS if k != "path"), "the plan's data defaults")
    tasks = _tasks(raw["tasks"], sequence, shared, settings.seed, root)
    plan = SequencePlan(
        sequence, str(base), raw["method"], tasks, options, settings, model_task, raw.get("quantize"), prototypes
    )
    if model_task == "seq-cls":
        plan.labels = _same_label_count(tasks)
    return plan


def _tasks(raw: Any, sequence: str, shared: dict, seed: int, root: Path) -> list[TaskPlan]:
    if not isinstance(raw, list) or not raw:
        raise PlanError('the plan\'s tasks must be a non-empty list, e.g. [{"name": "airline", "path": "airline.csv"}]')
    tasks: list[TaskPlan] = []
    for position, entry in enumerate(raw):
        where = f"tasks[{position}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise PlanError(f"{where} must be an object with at least a name and a path")
        name = _valid_name(entry["name"], f"{where}'s name")
        where = f"task {name!r} ({where})"
        if name == AUTO:
            raise PlanError(
                f"{where}: {AUTO!r} is reserved (it asks the server to route from the input); rename the task"
            )
        if any(t.name == name for t in tasks):
            raise PlanError(f"{where}: the name {name!r} is used by an earlier task; task names must be unique")
        _no_unknown(entry, ("name",) + DATA_KEYS, where)
        if "path" not in entry:
            raise PlanError(f"{where} has no path: the CSV/JSONL (or text) file of the task")
        _valid_name(adapter_name(sequence, name), f"{where}: its adapter name")
        for tag in (task_tag(name), sequence_tag(sequence)):
            _valid_name(tag, f"{where}: its tag", kind="tag")
        values = {"seed": seed, **shared, **{k: v for k, v in entry.items() if k != "name"}}
        if packaged.named(values["path"], packaged.DATA, root) is None:  # a name goes on to DataSpec: it has defaults
            values["path"] = str(_resolve(values["path"], root, packaged.DATA))
        spec = _filled(DataSpec, values, where)
        if not Path(spec.path).is_file():
            raise PlanError(
                f"{where}: data file {spec.path!r} not found (relative paths are relative to the plan file's directory)"
            )
        tasks.append(TaskPlan(name, position, spec))
    return tasks


def _same_label_count(tasks: list[TaskPlan]) -> dict[str, list[str]]:
    """Every task's labels; their counts must agree: one base, with one head shape, serves them all."""
    labels: dict[str, list[str]] = {}
    for task in tasks:
        try:
            labels[task.name] = labels_of(task.data)
        except AdapterHubError as exc:
            raise PlanError(f"task {task.name!r}: {exc}") from None
        first = tasks[0].name
        if len(labels[task.name]) != len(labels[first]):
            raise PlanError(
                f"task {task.name!r} has {len(labels[task.name])} labels ({', '.join(labels[task.name])}) but task "
                f"{first!r} has {len(labels[first])} ({', '.join(labels[first])}); every task of a sequence needs the "
                f"same number of labels, because one base with one classifier head shape serves all its adapters. "
                f"Merge or split labels, or start another sequence."
            )
    return labels


def _filled(options_class: type, values: dict, where: str) -> Any:
    try:
        return build_options(options_class, values, owner=where)
    except OptionError as exc:
        raise PlanError(str(exc)) from None


def _no_unknown(values: dict, known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise PlanError(f"{where} has no key {', '.join(map(repr, unknown))}; valid keys: {', '.join(known)}")


def _valid_name(value: Any, what: str, kind: str = "name") -> str:
    try:
        return validate_name(value, kind)
    except InvalidNameError as exc:
        raise PlanError(f"{what}: {exc}") from None


def _resolve(path: Any, root: Path, kind: str) -> Path:
    """``path`` relative to the plan's directory, or the packaged file of ``kind`` it names when nothing there has
    that name."""
    if not isinstance(path, str) or not path:
        raise PlanError(f"expected a path string, got {path!r}")
    if (entry := packaged.named(path, kind, root)) is not None:
        return entry.path()
    resolved = Path(path).expanduser()
    return resolved if resolved.is_absolute() else root / resolved
