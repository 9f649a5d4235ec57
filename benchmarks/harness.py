"""The measuring half of the benchmark harness: timing with warm-up and repeats, summary statistics, peak
memory, fixed seeds, and the `Context` every suite receives.

A suite calls `ctx.compare(case, Side(...), Side(...))` to time adapterhub and the baseline in alternation,
`ctx.time(case, Side(...))` for one side alone, or `ctx.record(...)` for samples it measured elsewhere (e.g.
in a child process, so that peak memory is not shared between the two sides). Everything a suite measures
ends up in `ctx.measurements`; `report.py` turns them into JSON, markdown and a plot.
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

OURS = "adapterhub"
BASELINE = "peft"
MB = 1024 * 1024


@dataclass
class Stats:
    """Summary of repeated samples: median with inter-quartile range and min/max as the spread."""

    n: int
    median: float
    q1: float
    q3: float
    min: float
    max: float
    mean: float

    @classmethod
    def of(cls, samples: list[float]) -> Stats:
        if not samples:
            raise ValueError("no samples to summarise")
        ordered = sorted(samples)
        if len(ordered) >= 2:
            q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q1 = q3 = ordered[0]
        return cls(len(ordered), statistics.median(ordered), q1, q3, ordered[0], ordered[-1], statistics.fmean(ordered))


@dataclass
class Measurement:
    """One implementation (`impl`: adapterhub or the baseline) doing one `case` with given `params`."""

    case: str
    impl: str
    what: str  # the call(s) timed, in words, e.g. "Registry.list()"
    params: dict[str, Any]
    unit: str
    samples: list[float]
    stats: Stats
    memory: dict[str, float] = field(default_factory=dict)  # peak_rss_mb, rss_increase_mb, cuda_peak_mb
    extra: dict[str, Any] = field(default_factory=dict)
    warmup: int | None = None  # untimed runs before the samples, when the harness timed them; None: the suite measured

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Side:
    """One side of a case: `fn` is timed, called as `fn()`, or as `fn(setup())` when `setup` is given;
    `teardown(state)` follows every call (state None without setup). Setup and teardown are not timed."""

    impl: str  # OURS, BASELINE, or another label
    what: str  # the call(s) timed, in words
    fn: Callable[..., Any]
    setup: Callable[[], Any] | None = None
    teardown: Callable[[Any], None] | None = None


@dataclass
class Check:
    """A target the suite states, e.g. "list at 10,000 adapters ≤ 50 ms", and whether this run met it."""

    what: str
    value: float
    limit: float
    unit: str

    @property
    def ok(self) -> bool:
        return self.value <= self.limit

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (if present) and torch, so both sides of a comparison see the same data."""
    random.seed(seed)
    try:
        import numpy

        numpy.random.seed(seed)
    except ImportError:
        pass
    import torch

    torch.manual_seed(seed)


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class PeakMemory:
    """Peak resident set size of this process (sampled every few ms by a thread) and peak CUDA allocation
    while the `with` block runs. RSS counts everything the process holds, including what was there before."""

    def __init__(self, cuda: bool, interval_s: float = 0.005) -> None:
        self.cuda = cuda
        self.interval_s = interval_s
        self.start = self.peak = 0
        self.cuda_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        self.start = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        if self.cuda:
            import torch

            self.cuda_peak = torch.cuda.max_memory_allocated()

    def summary(self) -> dict[str, float]:
        result = {"peak_rss_mb": self.peak / MB, "rss_increase_mb": (self.peak - self.start) / MB}
        if self.cuda:
            result["cuda_peak_mb"] = self.cuda_peak / MB
        return result


@dataclass
class Context:
    """What a suite gets: its size (`quick`), device, optional `--model`, a scratch directory, repeat counts,
    and the methods to time and record. `settings` and `notes` go into the report as written."""

    suite: str
    quick: bool
    device: str
    workdir: Path
    model: str | None = None
    repeats: int = 20
    warmup: int = 3
    seed: int = 0
    progress: bool = True
    measurements: list[Measurement] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tables: list[dict] = field(default_factory=list)
    plot: Callable[[dict, Path], None] | None = None  # the suite's own figure, drawn instead of the bar panels

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def _synchronize(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def _once(self, side: Side) -> float:
        """One call of `side`, in milliseconds; its setup and teardown run outside the timed region."""
        state = side.setup() if side.setup is not None else None
        self._synchronize()
        started = time.perf_counter()
        side.fn(state) if side.setup is not None else side.fn()
        self._synchronize()
        elapsed = time.perf_counter() - started
        if side.teardown is not None:
            side.teardown(state)
        return elapsed * 1000.0

    def _bar(self, label: str, total: int):
        return tqdm(total=total, desc=label, unit="run", leave=False, disable=not self.progress, dynamic_ncols=True)

    def compare(
        self,
        case: str,
        *sides: Side,
        params: dict[str, Any] | None = None,
        repeats: int | None = None,
        warmup: int | None = None,
    ) -> list[Measurement]:
        """Time `sides` (adapterhub and the baseline) in alternation, A B, B A, A B, ...: on a machine whose
        load drifts, both sides then run under the same conditions. `warmup` untimed rounds first."""
        repeats = self.repeats if repeats is None else repeats
        warmup = self.warmup if warmup is None else warmup
        samples: list[list[float]] = [[] for _ in sides]
        label = " ".join(filter(None, [f"{self.suite}: {case}", params_label(params)]))
        with self._bar(label, (warmup + repeats) * len(sides)) as bar, _frozen_gc():
            for i in range(warmup + repeats):
                order = list(enumerate(sides))
                for k, side in order if i % 2 == 0 else reversed(order):
                    elapsed = self._once(side)
                    if i >= warmup:
                        samples[k].append(elapsed)
                    bar.update(1)
        return [
            self.record(case, side.impl, times, what=side.what, params=params, warmup=warmup)
            for side, times in zip(sides, samples)
        ]

    def time(
        self,
        case: str,
        side: Side,
        *,
        params: dict[str, Any] | None = None,
        repeats: int | None = None,
        warmup: int | None = None,
        memory: bool = False,
    ) -> Measurement:
        """Time one side alone: `warmup` untimed calls, then `repeats` timed ones; with `memory`, also the
        peak RSS (and CUDA allocation) over the timed calls. Prefer `compare` for the two sides of a case."""
        repeats = self.repeats if repeats is None else repeats
        warmup = self.warmup if warmup is None else warmup
        samples: list[float] = []
        watch = PeakMemory(self.cuda) if memory else None
        label = " ".join(filter(None, [f"{self.suite}: {case}", params_label(params), f"[{side.impl}]"]))
        with self._bar(label, warmup + repeats) as bar, _frozen_gc():
            for i in range(warmup + repeats):
                if i == warmup and watch is not None:
                    watch.__enter__()
                elapsed = self._once(side)
                if i >= warmup:
                    samples.append(elapsed)
                bar.update(1)
        if watch is not None:
            watch.__exit__(None, None, None)
        return self.record(case, side.impl, samples, what=side.what, params=params, memory=watch.summary() if watch else None,
                           warmup=warmup)  # fmt: skip

    def record(
        self,
        case: str,
        impl: str,
        samples: list[float],
        *,
        what: str,
        params: dict[str, Any] | None = None,
        unit: str = "ms",
        memory: dict[str, float] | None = None,
        extra: dict[str, Any] | None = None,
        warmup: int | None = None,
    ) -> Measurement:
        """Add samples measured by the suite itself (e.g. per-step times from a child process); ``warmup`` is
        for `compare` and `time`, which know how many untimed runs came first."""
        measurement = Measurement(case, impl, what, dict(params or {}), unit, [round(s, 6) for s in samples],
                                  Stats.of(samples), dict(memory or {}), dict(extra or {}), warmup)  # fmt: skip
        self.measurements.append(measurement)
        return measurement

    def check(self, what: str, value: float, limit: float, unit: str = "ms") -> Check:
        """State a target (value must be ≤ limit); reported, never fatal: timings on a shared machine vary."""
        check = Check(what, value, limit, unit)
        self.checks.append(check)
        return check

    def note(self, text: str) -> None:
        self.notes.append(text)

    def table(self, title: str, columns: list[str], rows: list[list[Any]], note: str | None = None) -> None:
        """A table of the suite's own (e.g. an accuracy matrix) that is not a timing: kept in the JSON, shown in
        the markdown after the measurements. ``rows`` hold the cells; numbers are formatted, None shows as –."""
        self.tables.append(
            {"title": title, "columns": list(columns), "rows": [list(row) for row in rows], "note": note}
        )

    @contextmanager
    def scratch(self, name: str) -> Iterator[Path]:
        """A fresh directory under the run's scratch space, removed afterwards."""
        with tempfile.TemporaryDirectory(prefix=f"{name}-", dir=self.workdir) as directory:
            yield Path(directory)


@contextmanager
def _frozen_gc() -> Iterator[None]:
    """Freeze the objects alive now (torch and transformers keep millions), so that a garbage collection
    inside a timed call walks only new objects instead of adding a long pause at random."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def params_label(params: dict[str, Any] | None) -> str:
    """`adapters=10000, r=8`: how parameters read in progress bars, tables and plots."""
    return ", ".join(f"{k}={v}" for k, v in (params or {}).items())


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
