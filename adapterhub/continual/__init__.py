"""Continual learning with one adapter per task on one frozen base, and a router between them.

``plan`` reads and validates a task-sequence plan; ``sequence`` trains it (one registry adapter per task,
tagged ``task-<task>`` and ``sequence-<name>``, with the router's prototypes in its manifest); ``features``
computes the frozen base's features and the prototypes; ``router`` picks a task's adapter from a task id
or from the input; ``evaluate`` measures every task with oracle ids and through the router; ``command``
is ``adapterhub continual``. Earlier adapters are never touched by later tasks, so nothing is forgotten.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "adapterhub.continual.evaluate": ("SequenceEvaluation", "TaskEvaluation", "evaluate_sequence"),
    "adapterhub.continual.plan": ("PlanError", "SequencePlan", "TaskPlan", "load_plan", "parse_plan"),
    "adapterhub.continual.router": ("Route", "RoutedTask", "Router", "UnknownTaskError"),
    "adapterhub.continual.sequence": ("TaskRun", "train_sequence"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    # The names above are imported when first used: `adapterhub continual --help` imports this package for
    # ``command`` and must not pay for torch and the training stack (PEP 562).
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
