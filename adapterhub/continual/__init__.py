"""Continual learning with one adapter per task on one frozen base, and a router between them.

``plan`` reads and validates a task-sequence plan; ``sequence`` trains it (one registry adapter per task,
tagged ``task-<task>`` and ``sequence-<name>``, with the router's prototypes in its manifest); ``features``
computes the frozen base's features and the prototypes; ``router`` picks a task's adapter from a task id
or from the input; ``evaluate`` measures every task with oracle ids and through the router; ``command``
is ``adapterhub continual``. Earlier adapters are never touched by later tasks, so nothing is forgotten.
"""

from adapterhub.continual.evaluate import SequenceEvaluation, TaskEvaluation, evaluate_sequence
from adapterhub.continual.plan import PlanError, SequencePlan, TaskPlan, load_plan, parse_plan
from adapterhub.continual.router import Route, RoutedTask, Router, UnknownTaskError
from adapterhub.continual.sequence import TaskRun, train_sequence

__all__ = [
    "PlanError", "SequencePlan", "TaskPlan", "load_plan", "parse_plan", "TaskRun", "train_sequence", "Router",
    "RoutedTask", "Route", "UnknownTaskError", "SequenceEvaluation", "TaskEvaluation", "evaluate_sequence",
]  # fmt: skip
