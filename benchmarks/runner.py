"""Run one suite end to end: check its requirements, build its `Context`, seed, run, write the report.

`benchmarks.cli` calls this for each suite named on the command line; it is usable from Python as well.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import DEFAULT_OUTPUT, environment, report, suites
from benchmarks.harness import Context, default_device, seed_everything

QUICK_REPEATS, QUICK_WARMUP = 5, 1
FULL_REPEATS, FULL_WARMUP = 20, 3


@dataclass
class RunOptions:
    quick: bool = False
    output: Path = DEFAULT_OUTPUT
    model: str | None = None
    device: str | None = None  # None: cuda when available, else cpu
    repeats: int | None = None
    warmup: int | None = None
    seed: int = 0
    progress: bool = True


def result_stem(suite: str, device: str, quick: bool) -> str:
    """`registry-cpu`, or `registry-cpu-quick` so that a quick run never overwrites a full one."""
    return f"{suite}-{device}" + ("-quick" if quick else "")


def run_suite(name: str, options: RunOptions) -> tuple[dict, list[Path]]:
    """Run suite ``name``; return its result document and the JSON, markdown and PNG paths written. Raises
    `suites.SuiteUnavailable` before anything runs when the suite cannot run here."""
    suite = suites.load(name)
    device = options.device or default_device()
    suite.check_runnable(device)
    suites.require("matplotlib", "matplotlib", "the benchmark plots")
    suites.require("psutil", "psutil", "memory measurement")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise suites.BenchmarkError("--device cuda was asked for, but torch sees no CUDA device here")
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"adapterhub-bench-{name}-") as workdir:
        ctx = Context(
            suite=name, quick=options.quick, device=device, workdir=Path(workdir), model=options.model,
            repeats=options.repeats or (QUICK_REPEATS if options.quick else FULL_REPEATS),
            warmup=options.warmup if options.warmup is not None else (QUICK_WARMUP if options.quick else FULL_WARMUP),
            seed=options.seed, progress=options.progress,
        )  # fmt: skip
        machine = environment.describe(device)  # before the run: the load average is that of the machine, not ours
        seed_everything(options.seed)
        suite.run(ctx)
    document = report.result_document(ctx, suite.description, machine, started, time.perf_counter() - clock)
    stem = result_stem(name, device.split(":")[0], options.quick)
    paths = report.write(document, ctx.measurements, Path(options.output), stem, suite_plot=ctx.plot)
    return document, paths
