"""Prometheus metrics of the server, and the alert thresholds that log a warning when crossed.

Each app owns its own ``CollectorRegistry`` (several apps can live in one process, as in tests). Pool
counters (slot hits, slot misses, swaps, evictions) are read from ``AdapterPool.stats`` at scrape time.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Collection

import psutil
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from adapterhub.runtime import AdapterPool
from adapterhub.server.settings import AlertThresholds  # defined with the other settings (torch-free)

log = logging.getLogger("adapterhub.server")
SLOT_HITS = "Adapter activations (one per distinct adapter per model call) that found it in a device slot."
SLOT_MISSES = "Adapter activations (one per distinct adapter per model call) that copied it into a slot."
BATCH_SIZE = (
    "Rows per batched model call: a batch of the static batcher (/generate, /classify, and /v1/ completions "
    "with --batching static), or a decode step of the continuous batch (/v1/ completions)."
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _PoolCollector:
    def __init__(self, pool: AdapterPool) -> None:
        self.pool = pool

    def collect(self):
        stats = self.pool.stats
        for name, value, text in (
            ("adapterhub_pool_slot_hits", stats.slot_hits, SLOT_HITS),
            ("adapterhub_pool_slot_misses", stats.slot_misses, SLOT_MISSES),
            # the old names, kept for dashboards until 0.3 (they always counted activations, not requests)
            ("adapterhub_pool_hits", stats.slot_hits, "Deprecated (removed in 0.3): adapterhub_pool_slot_hits."),
            ("adapterhub_pool_misses", stats.slot_misses, "Deprecated (removed in 0.3): adapterhub_pool_slot_misses."),
            ("adapterhub_adapter_swaps", stats.swaps + self.pool.peft.swaps, "Adapters copied into a slot or attached through peft."),
            ("adapterhub_registry_loads", stats.registry_loads, "Adapters read (and integrity-checked) from the registry."),
            ("adapterhub_device_evictions", stats.device_evictions, "Adapters evicted from a device slot to host memory."),
            ("adapterhub_host_evictions", stats.host_evictions, "Adapters evicted from host memory (back to the registry only)."),
        ):  # fmt: skip
            yield CounterMetricFamily(name, text, value=value)
        memory = GaugeMetricFamily("adapterhub_memory_bytes", "Memory in use.", labels=["kind"])
        for kind, value in memory_bytes(self.pool).items():
            memory.add_metric([kind], value)
        yield memory
        yield GaugeMetricFamily("adapterhub_adapters_resident", "Adapters in device slots.",
                                value=sum(1 for a in self.pool.describe() if a["tier"] == "device"))  # fmt: skip


def memory_bytes(pool: AdapterPool) -> dict[str, int]:
    """Process RSS, the slot tensors, adapters cached in host memory, and (on GPU) allocated device memory."""
    values = {"process_rss": psutil.Process().memory_info().rss, "slots": pool.nbytes, "host_cache": pool.host_nbytes}
    if torch.cuda.is_available():
        values["cuda_allocated"] = torch.cuda.memory_allocated()
    return values


class ServerMetrics:
    """The app's metrics; requests are counted by endpoint, those to any path not in ``endpoints`` as "other"
    (so requests to made-up paths cannot grow the label set without bound)."""

    def __init__(
        self, pool: AdapterPool, alerts: AlertThresholds | None = None, endpoints: Collection[str] = ()
    ) -> None:
        self.pool, self.alerts, self.endpoints = pool, alerts or AlertThresholds(), frozenset(endpoints)
        self.registry = CollectorRegistry()
        self.latency = Histogram("adapterhub_request_latency_seconds", "Request latency on every route, queueing included (a stream: until its last byte).",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.requests = Counter("adapterhub_requests", "Requests answered on every route, by endpoint (other: any path but the API routes) and HTTP status.",
                                ["endpoint", "status"], registry=self.registry)  # fmt: skip
        self.tokens = Counter(
            "adapterhub_generated_tokens",
            "New tokens generated: /generate, /v1/completions and /v1/chat/completions, streamed or whole.",
            registry=self.registry,
        )
        self.batch_size = Histogram("adapterhub_batch_size", BATCH_SIZE,
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)  # fmt: skip
        self.throughput = Gauge("adapterhub_throughput_requests_per_second",
                                "Requests answered per second over the last minute (counted among the last alert-window requests).", registry=self.registry)  # fmt: skip
        self.registry.register(_PoolCollector(pool))
        self._recent: deque[tuple[float, float]] = deque(maxlen=alerts.window)  # (finished at, seconds)
        self._alerting = {"p95": False, "memory": False}

    def observe(self, path: str, status: int, seconds: float) -> None:
        endpoint = path if path in self.endpoints else "other"
        self.requests.labels(endpoint, str(status)).inc()
        if status < 400:
            self.latency.labels(endpoint).observe(seconds)
            self._recent.append((time.monotonic(), seconds))
            self._check_alerts()

    def p95_ms(self) -> float | None:
        if not self._recent:
            return None
        ordered = sorted(seconds for _, seconds in self._recent)
        return 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]

    def _check_alerts(self) -> None:
        p95 = self.p95_ms()
        rss_mb = memory_bytes(self.pool)["process_rss"] / 2**20
        self._alert(
            "p95", self.alerts.p95_ms, p95, f"p95 latency {p95:.1f} ms over the last {len(self._recent)} requests"
        )
        self._alert("memory", self.alerts.memory_mb, rss_mb, f"process memory {rss_mb:.0f} MB")

    def _alert(self, name: str, threshold: float | None, value: float | None, what: str) -> None:
        """Warn once when ``value`` goes above ``threshold``, and once when it is back under."""
        if threshold is None or value is None:
            return
        above = value > threshold
        if above and not self._alerting[name]:
            log.warning("ALERT %s is above the threshold of %s", what, threshold)
        elif not above and self._alerting[name]:
            log.warning("resolved: %s is back under the threshold of %s", what, threshold)
        self._alerting[name] = above

    def active_alerts(self) -> list[str]:
        return [name for name, on in self._alerting.items() if on]

    def exposition(self) -> bytes:
        now = time.monotonic()
        self.throughput.set(sum(1 for finished, _ in self._recent if now - finished <= 60) / 60)
        return generate_latest(self.registry)
