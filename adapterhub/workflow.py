"""End-to-end jobs behind ``adapterhub train`` and ``adapterhub eval``, usable from Python as well.

train: read data → load the frozen (optionally quantized) base → attach the method → train with
per-epoch evaluation → save as PEFT + manifest → push to the registry with its metrics.
eval: resolve a registry adapter → load the base it names → re-create the same held-out split → metrics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterhub_registry import Registry
from adapterhub_registry.names import validate_name

from adapterhub import adapters, plugins
from adapterhub.base import Base, load_base
from adapterhub.batches import block_batches, classification_batches
from adapterhub.data import (
    ClassificationData,
    load_classification,
    load_text_blocks,
    normalise,
    read_text,
    split_blocks,
    split_classification,
)
from adapterhub.distributed import Distributed
from adapterhub.errors import OptionError
from adapterhub.evaluation import evaluate_batches
from adapterhub.manifest import Manifest
from adapterhub.monitor import MonitorSettings
from adapterhub.settings import DataSpec
from adapterhub.train import TrainResult, TrainSettings, balanced_class_weights, seed_everything, total_steps, train


@dataclass
class TrainJob:
    base: str
    method: str
    data: DataSpec
    task: str = "seq-cls"
    options: dict[str, Any] = field(default_factory=dict)
    settings: TrainSettings = field(default_factory=TrainSettings)
    quantize: str | None = None
    output: str | None = None
    push: str | None = None
    tags: list[str] = field(default_factory=list)
    registry_root: str | None = None
    progress: bool = True
    monitor: MonitorSettings = field(default_factory=MonitorSettings)


@dataclass
class TrainOutcome:
    """What a run produced. In a data-parallel run only the main rank (``is_main``) saves and pushes; the
    other ranks get the same result and metrics with no ``adapter_dir``."""

    result: TrainResult
    adapter_dir: Path | None
    manifest: Manifest
    trainable_parameters: int
    adapter_bytes: int
    record: Any = None  # the registry record when pushed
    world_size: int = 1
    is_main: bool = True


def _cap(data: ClassificationData, max_samples: int | None, seed: int) -> ClassificationData:
    """A deterministic subset of ``max_samples`` examples (by hash order), identical in train and eval."""
    if not max_samples or max_samples >= len(data.texts):
        return data
    keyed = sorted(range(len(data.texts)), key=lambda i: hashlib.sha256(f"{seed}|{normalise(data.texts[i])}".encode()).digest())
    return data.subset(sorted(keyed[:max_samples]))


def classification_split(spec: DataSpec, label_names: list[str] | None = None) -> tuple[ClassificationData, ClassificationData]:
    data = load_classification(
        spec.path, text_column=spec.text_column, label_column=spec.label_column,
        encoding=spec.encoding, dedupe=spec.dedupe, label_names=label_names,
    )  # fmt: skip
    return split_classification(_cap(data, spec.max_samples, spec.seed), spec.test_split, spec.seed)


def _batch_makers(base: Base, spec: DataSpec, settings: TrainSettings, label_names: list[str] | None):
    """``(make_train(order), n_train, make_eval(), summary)`` for the base's task."""
    tokenizer = base.tokenizer
    if base.task == "seq-cls":
        train_set, test_set = classification_split(spec, label_names)
        if not train_set.texts or not test_set.texts:
            raise OptionError(f"the split of {spec.path} left an empty train or test set; change --test-split")
        summary = {"train_examples": len(train_set.texts), "test_examples": len(test_set.texts),
                   "majority_baseline": test_set.majority_fraction(),
                   "train_label_counts": [train_set.labels.count(c) for c in range(len(train_set.label_names))]}  # fmt: skip
        if settings.class_weights == "balanced":
            summary["class_weights"] = balanced_class_weights(train_set.labels, len(train_set.label_names))
        return (
            lambda order: classification_batches(train_set, tokenizer, settings.batch_size, settings.max_length, order),
            len(train_set.texts),
            lambda: classification_batches(test_set, tokenizer, settings.eval_batch_size, settings.max_length),
            summary,
        )
    blocks = load_text_blocks(spec.path, tokenizer, settings.block_size, spec.encoding)
    train_blocks, test_blocks = split_blocks(blocks, spec.test_split, spec.seed)
    pad = tokenizer.pad_token_id
    return (
        lambda order: block_batches(train_blocks, pad, settings.batch_size, order),
        len(train_blocks),
        (lambda: block_batches(test_blocks, pad, settings.eval_batch_size)) if test_blocks else None,
        {"train_blocks": len(train_blocks), "test_blocks": len(test_blocks)},
    )


def labels_of(spec: DataSpec) -> list[str]:
    return load_classification(
        spec.path, text_column=spec.text_column, label_column=spec.label_column, encoding=spec.encoding, dedupe=spec.dedupe
    ).label_names


def train_adapter(job: TrainJob) -> TrainOutcome:
    """Run one training job end to end; push to the registry when ``job.push`` names the adapter.

    Started by ``torchrun`` / ``accelerate launch``, it trains data-parallel: ``job.settings.batch_size``
    is the global batch, shared between the ranks, and only rank 0 writes the adapter and pushes it.
    """
    if job.push:
        validate_name(job.push)  # fail on a bad name before training, not after
    options = adapters.make_options(job.method, job.options)
    if job.settings.class_weights != "none" and job.task != "seq-cls":
        raise OptionError("--class-weights weighs a classifier's labels; a causal-LM run has none (leave it at none)")
    distributed = Distributed.from_environment()
    registry = Registry(job.registry_root) if job.push and distributed.is_main else None  # a bad root fails now
    seed_everything(job.settings.seed)
    labels = labels_of(job.data) if job.task == "seq-cls" else None
    if job.task == "causal-lm":
        read_text(job.data.path, job.data.encoding)  # a missing or mis-encoded file fails before the slow base load
    base = load_base(job.base, task=job.task, quantize=job.quantize, labels=labels)
    make_train, n_train, make_eval, summary = _batch_makers(base, job.data, job.settings, labels)
    spec = plugins.catalog().method(job.method)
    if spec.for_run is not None:  # options that depend on the run's length (AdaLoRA's budget schedule)
        options = spec.for_run(options, total_steps(n_train, job.settings))
    model = adapters.attach(base, job.method, options)
    result = train(model, make_train, n_train, make_eval, base.task, job.settings, spec.on_train_step, job.progress,
                   monitor=job.monitor, distributed=distributed, class_weights=summary.get("class_weights"))  # fmt: skip
    training = {**dataclasses.asdict(job.settings), "train_seconds": result.train_seconds, "steps": result.steps,
                "world_size": distributed.world_size, "monitor": job.monitor.recorded(),
                "stopped_early": result.stopped_early, "best_step": result.best_step}  # fmt: skip
    manifest = adapters.build_manifest(base, job.method, options, data=job.data.recorded(), data_summary=summary, training=training)
    outcome = TrainOutcome(result, None, manifest, adapters.trainable_parameters(model), 0,
                           world_size=distributed.world_size, is_main=distributed.is_main)  # fmt: skip
    if distributed.is_main:
        _save_and_push(job, model, base, outcome, registry)
    distributed.barrier()  # the other ranks exit only once the adapter is safely written
    return outcome


def _save_and_push(job: TrainJob, model, base: Base, outcome: TrainOutcome, registry: Registry | None) -> None:
    output = Path(job.output) if job.output else Path(tempfile.mkdtemp(prefix="adapterhub-"))
    adapters.save_adapter(model, output, outcome.manifest)
    outcome.adapter_dir, outcome.adapter_bytes = output, (output / adapters.WEIGHTS_FILE).stat().st_size
    if registry is not None:
        result = outcome.result
        outcome.record = registry.push(
            job.push, output, method=job.method, base_fingerprint=base.fingerprint_id,
            metrics={**result.metrics, "train_seconds": result.train_seconds}, tags=job.tags,
        )  # fmt: skip


def evaluate_adapter(
    ref: str,
    base_path: str,
    data: DataSpec | None = None,
    *,
    quantize: str | None = None,
    registry_root: str | None = None,
    force: bool = False,
    settings: TrainSettings | None = None,
) -> dict:
    """Metrics of a registry adapter on the held-out split of ``data`` (default: the data it was trained on,
    read from the same path given again, split as recorded)."""
    record, tensors = Registry(registry_root).load(ref)
    manifest = Manifest.from_dict(record.manifest)
    base = load_base(base_path, task=manifest.model_task or "causal-lm", quantize=quantize, labels=manifest.labels or None)
    model = adapters.load_adapter(
        base, record.peft_config, tensors, adapter_base=record.base_fingerprint, label=record.ref, force=force,
        manifest=record.manifest,
    )  # fmt: skip
    settings = settings or TrainSettings(**{k: v for k, v in (manifest.training or {}).items() if k in TrainSettings.__dataclass_fields__})
    if data is None:
        raise OptionError("pass --data: the file the held-out split is taken from")
    _, _, make_eval, summary = _batch_makers(base, data, settings, base.labels or None)
    if make_eval is None:
        raise OptionError(f"{data.path} gives no held-out examples; raise --test-split")
    return {**evaluate_batches(model, make_eval(), base.task), **summary}


def recorded_data_spec(manifest: dict, path: str, **overrides: Any) -> DataSpec:
    """The DataSpec an adapter was trained with (``manifest`` as the registry stores it), pointed at ``path``
    (a local copy of the same file)."""
    recorded = {k: v for k, v in (Manifest.from_dict(manifest).data or {}).items() if k in DataSpec.__dataclass_fields__}
    recorded.update({k: v for k, v in overrides.items() if v is not None})
    recorded["path"] = path
    return DataSpec(**recorded)
