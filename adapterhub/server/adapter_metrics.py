"""Per-adapter serving metrics with a bounded label set: the busiest ``top`` adapters by name, the rest as ``other``.

A server may serve thousands of adapters; one Prometheus series per adapter per histogram bucket would grow
without bound and drown the scrape. prometheus_client fixes a series' labels when it is first observed, so it
cannot fold the quiet ones together later. This collector keeps its own per-adapter counts (a few hundred bytes
per adapter, only for adapters that resolved in the registry) and, at each scrape, emits the ``top`` busiest
adapters by request count under their names and the sum of all others as ``other``. ``base`` is the base model
without an adapter.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
OTHER = "other"


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def add(self, other: _Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.total += other.total

    def buckets(self) -> list[tuple[str, int]]:
        cumulative, rows = 0, []
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            cumulative += count
            rows.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        return rows


@dataclass
class _AdapterCounts:
    requests: int = 0
    tokens: int = 0
    cancelled: int = 0
    ttft: _Histogram = field(default_factory=lambda: _Histogram(TTFT_BUCKETS))
    itl: _Histogram = field(default_factory=lambda: _Histogram(ITL_BUCKETS))

    def add(self, other: _AdapterCounts) -> None:
        self.requests += other.requests
        self.tokens += other.tokens
        self.cancelled += other.cancelled
        self.ttft.add(other.ttft)
        self.itl.add(other.itl)


class AdapterMetrics:
    """Requests, generated tokens, time to first token and inter-token latency by adapter name; queue gauges."""

    def __init__(self, top: int = 20) -> None:
        self.top = top
        self.by_adapter: dict[str, _AdapterCounts] = {}
        self.queue_depth = lambda: 0  # set by the server: requests waiting for a row
        self.running_rows = lambda: 0  # set by the server: rows prefilling or decoding

    def _of(self, adapter: str) -> _AdapterCounts:
        return self.by_adapter.setdefault(adapter, _AdapterCounts())

    def request(self, adapter: str) -> None:
        self._of(adapter).requests += 1

    def tokens(self, adapter: str, count: int) -> None:
        self._of(adapter).tokens += count

    def cancel(self, adapter: str) -> None:
        self._of(adapter).cancelled += 1

    def first_token(self, adapter: str, seconds: float) -> None:
        self._of(adapter).ttft.observe(seconds)

    def between_tokens(self, adapter: str, seconds: float) -> None:
        self._of(adapter).itl.observe(seconds)

    def folded(self) -> dict[str, _AdapterCounts]:
        """The ``top`` busiest adapters by name, everything else summed as ``other``."""
        busiest = sorted(self.by_adapter, key=lambda name: (-self.by_adapter[name].requests, name))
        shown = {name: self.by_adapter[name] for name in busiest[: self.top]}
        if len(busiest) > self.top:
            other = _AdapterCounts()
            for name in busiest[self.top :]:
                other.add(self.by_adapter[name])
            shown[OTHER] = _merged(shown[OTHER], other) if OTHER in shown else other  # an adapter named "other"
        return shown

    def collect(self) -> Iterator:
        families = {
            "requests": CounterMetricFamily("adapterhub_adapter_requests", "Generation requests (/generate, /v1/completions, /v1/chat/completions), by adapter.", labels=["adapter"]),
            "tokens": CounterMetricFamily("adapterhub_adapter_generated_tokens", "Tokens generated (/generate and /v1/ completions), by adapter.", labels=["adapter"]),
            "cancelled": CounterMetricFamily("adapterhub_adapter_cancelled", "/v1/ completions whose client went away before the end, by adapter.", labels=["adapter"]),
            "ttft": HistogramMetricFamily("adapterhub_time_to_first_token_seconds", "From arrival to the first token (/generate and /v1/ completions; an answer sent whole: its latency), by adapter.", labels=["adapter"]),
            "itl": HistogramMetricFamily("adapterhub_inter_token_latency_seconds", "Between two tokens of a /v1/ completion on the continuous batch, by adapter.", labels=["adapter"]),
        }  # fmt: skip
        for name, counts in self.folded().items():
            families["requests"].add_metric([name], counts.requests)
            families["tokens"].add_metric([name], counts.tokens)
            families["cancelled"].add_metric([name], counts.cancelled)
            families["ttft"].add_metric([name], counts.ttft.buckets(), counts.ttft.total)
            families["itl"].add_metric([name], counts.itl.buckets(), counts.itl.total)
        yield from families.values()
        yield GaugeMetricFamily(
            "adapterhub_queue_depth",
            "/v1/ completions waiting for a row of the continuous batch.",
            value=self.queue_depth(),
        )
        yield GaugeMetricFamily(
            "adapterhub_running_rows",
            "/v1/ completions prefilling or decoding in the continuous batch.",
            value=self.running_rows(),
        )


def _merged(a: _AdapterCounts, b: _AdapterCounts) -> _AdapterCounts:
    merged = _AdapterCounts()
    merged.add(a)
    merged.add(b)
    return merged
