"""Where the replicas report, so the ingress's ``/metrics`` covers every one of them.

Ray Serve routes each request to one replica and offers no call that reaches all of them, and a replica's
metrics live in its own process (its app's ``CollectorRegistry``). So each replica posts a ``ReplicaReport``
(its Prometheus exposition text, its pid and the adapters its pool holds) to one small named actor, the
``ReplicaBoard``, every ``REPORT_EVERY_S`` seconds; the ingress reads the board and merges the texts, adding a
``replica`` label to every sample. Ray's own metrics (``ray.serve.metrics``) were the alternative: they need
Ray's metrics agent and a Prometheus scraping every node, and the server's metrics would have to be redefined
as Ray metrics; this way they stay the one server's, unchanged. A report older than ``STALE_AFTER_S`` is dropped,
so a dead replica leaves ``/metrics`` within seconds and its replacement appears under its new id.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import ray
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

BOARD_NAME = "adapterhub-replica-board"
NAMESPACE = "adapterhub"
REPORT_EVERY_S = 1.0
STALE_AFTER_S = 4.0


@dataclass(frozen=True)
class ReplicaReport:
    replica: str  # Ray Serve's unique id of the replica
    pid: int
    exposition: str  # the replica app's /metrics text
    resident: tuple[str, ...]  # name@version of the adapters in its pool's device slots (or attached through peft)


@ray.remote(num_cpus=0)
class ReplicaBoard:
    """The newest report of every live replica (an actor: one place every process of the cluster can reach)."""

    def __init__(self) -> None:
        self.reports: dict[str, tuple[float, ReplicaReport]] = {}

    def post(self, report: ReplicaReport) -> None:
        self.reports[report.replica] = (time.monotonic(), report)

    def live(self, stale_after_s: float = STALE_AFTER_S) -> list[ReplicaReport]:
        """Reports younger than ``stale_after_s`` (on this actor's clock, so node clocks need not agree)."""
        now = time.monotonic()
        self.reports = {name: (at, report) for name, (at, report) in self.reports.items() if now - at <= stale_after_s}
        return [report for _, report in self.reports.values()]


def board(create: bool = False):
    """The board's handle: created by whoever deploys the application, looked up by the replicas and the ingress."""
    if create:
        return ReplicaBoard.options(
            name=BOARD_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached"
        ).remote()
    return ray.get_actor(BOARD_NAME, namespace=NAMESPACE)


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def merged_exposition(texts: Mapping[str, str]) -> bytes:
    """One Prometheus text from one per replica: each family once, every sample labelled ``replica="<id>"``."""
    families: dict[str, Metric] = {}
    for replica, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type, family.unit)
            )
            merged.samples += [
                sample._replace(labels={**sample.labels, "replica": replica}) for sample in family.samples
            ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families.values()))
    return generate_latest(registry)
