"""End-to-end jobs behind ``adapterhub train`` and ``adapterhub eval``, usable from Python as well.

train: read data → load the frozen (optionally quantized) base onto its device, in its dtype → attach the
method → train with per-epoch evaluation (and checkpoints, from which ``--resume`` continues) → save as PEFT + manifest → push to the registry with its metrics (``push_trained``, which continual training uses too).
eval: resolve a registry adapter → load the base it names → re-create the same held-out split → metrics.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adapterhub import adapters, plugins
from adapterhub.base import load_base, resolve_placement
from adapterhub.checkpoints import Checkpoint, CheckpointStore
from adapterhub.data import DataFile
from adapterhub.deprecation import moved_names
from adapterhub.distributed import Distributed
from adapterhub.errors import OptionError
from adapterhub.evaluation import evaluate_batches
from adapterhub.job_checks import checked_data
from adapterhub.manifest import ContinualEntry, Manifest
from adapterhub.model_tasks import LOAD_DEFAULT, TRAIN_DEFAULT
from adapterhub.monitor import MonitorSettings, stderr_line
from adapterhub.prepare import labels_of, prepare, read_source
from adapterhub.settings import CheckpointSettings, DataSpec, Placement
from adapterhub.train import TrainResult, TrainSettings, seed_everything, total_steps, train
from adapterhub_registry import AdapterRecord, Registry
from adapterhub_registry.names import validate_name

# the CLI checks a job's data before it imports this module (torch and all): the function moved where it can
__getattr__ = moved_names(
    __name__, {"recorded_data_spec": "adapterhub.job_checks.recorded_data_spec"}, since="1.1", removed_in="1.3"
)


@dataclass
class TrainJob:
    base: str
    method: str
    data: DataSpec
    model_task: str = TRAIN_DEFAULT
    options: dict[str, Any] = field(default_factory=dict)
    settings: TrainSettings = field(default_factory=TrainSettings)
    quantize: str | None = None
    output: str | None = None
    push: str | None = None
    tags: list[str] = field(default_factory=list)
    registry_root: str | None = None
    progress: bool = True
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    placement: Placement = field(default_factory=Placement)
    checkpointing: CheckpointSettings = field(default_factory=CheckpointSettings)
    source: DataFile | None = None  # ``data``'s file when the caller already read it (``job_checks.checked_data``)


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


def train_adapter(job: TrainJob) -> TrainOutcome:
    """Run one training job end to end; push to the registry when ``job.push`` names the adapter.

    Started by ``torchrun`` / ``accelerate launch``, it trains data-parallel: ``job.settings.batch_size``
    is the global batch, shared between the ranks, and only rank 0 writes the adapter and pushes it.
    """
    if job.push:
        validate_name(job.push)  # fail on a bad name before training, not after
    options = adapters.make_options(job.method, job.options)
    if job.settings.class_weights != "none" and job.model_task != "seq-cls":
        raise OptionError("--class-weights weighs a classifier's labels; a causal-LM run has none (leave it at none)")
    if job.checkpointing.resume and job.checkpointing.every is None:
        raise OptionError("--resume continues from the checkpoints --checkpoint-every writes: repeat the command line "
                          "of the run, --checkpoint-every included, plus --resume")  # fmt: skip
    device, dtype = resolve_placement(job.placement.device, job.placement.dtype)  # a GPU that is not there fails now
    distributed = Distributed.from_environment()
    registry = Registry(job.registry_root) if job.push and distributed.is_main else None  # a bad root fails now
    seed_everything(job.settings.seed)
    # the run's one read (unless the caller's checks made it): a bad file fails before the slow base load
    source = job.source or read_source(job.data)
    labels = labels_of(job.data, source) if job.model_task == "seq-cls" else None
    base = load_base(
        job.base, model_task=job.model_task, quantize=job.quantize, labels=labels, device=device, dtype=dtype
    )
    if job.settings.gradient_checkpointing:  # non-reentrant: the frozen base's inputs need no gradient
        base.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    data = prepare(base, job.data, job.settings, labels, source)
    spec = plugins.catalog().method(job.method)
    if spec.for_run is not None:  # options that depend on the run's length (AdaLoRA's budget schedule)
        options = spec.for_run(options, total_steps(data.n_train, job.settings))
    model = adapters.attach(base, job.method, options)
    identity = {"base": base.fingerprint_id, "quantize": job.quantize, "method": job.method, "model_task": base.model_task,
                "options": dataclasses.asdict(options), "data": job.data.recorded(source.sha256),
                "settings": dataclasses.asdict(job.settings), "world_size": distributed.world_size}  # fmt: skip
    store, resume_from = _checkpoints(job.checkpointing, identity, distributed)
    result = train(model, data.make_train, data.n_train, data.make_eval, base.model_task, job.settings, spec.on_train_step,
                   job.progress, monitor=job.monitor, distributed=distributed,
                   class_weights=data.summary.get("class_weights"), dtype=dtype, checkpoints=store,
                   resume_from=resume_from)  # fmt: skip
    training = {**dataclasses.asdict(job.settings), "train_seconds": result.train_seconds, "steps": result.steps,
                "world_size": distributed.world_size, "monitor": job.monitor.recorded(),
                "stopped_early": result.stopped_early, "best_step": result.best_step,
                "history": result.history}  # fmt: skip  # the curve the web page draws: one row per evaluation
    manifest = adapters.build_manifest(base, job.method, options, data=job.data.recorded(source.sha256),
                                       data_summary=data.summary, training=training)  # fmt: skip
    outcome = TrainOutcome(result, None, manifest, adapters.trainable_parameters(model), 0,
                           world_size=distributed.world_size, is_main=distributed.is_main)  # fmt: skip
    if distributed.is_main:
        _save_and_push(job, model, outcome, registry)
    distributed.barrier()  # the other ranks exit only once the adapter is safely written
    return outcome


def _checkpoints(settings: CheckpointSettings, identity: dict, distributed: Distributed
                 ) -> tuple[CheckpointStore | None, Checkpoint | None]:  # fmt: skip
    """The run's checkpoint folder and the checkpoint to resume from: the newest one under ``--resume`` (refused
    when another run wrote it); a fresh run clears the folder so that a later ``--resume`` finds only its own."""
    if settings.every is None:
        return None, None
    store = CheckpointStore(settings.directory, identity, settings.every, settings.keep)
    if not settings.resume:
        if distributed.is_main:
            store.clear()
        distributed.barrier()
        stderr_line(f"checkpoints every {settings.every} steps in {store.directory}")
        return store, None
    newest = store.newest()
    stderr_line(
        f"resuming from {newest.path}" if newest else f"no checkpoint in {store.directory} yet: training from step 0"
    )
    return store, newest


def _save_and_push(job: TrainJob, model, outcome: TrainOutcome, registry: Registry | None) -> None:
    """Save the adapter to ``--output`` and push it. Pushed without ``--output``, it is saved into a temporary
    folder removed once the registry holds it (``adapter_dir`` None); with neither, that folder is the only copy
    and is kept, as ``adapter_dir``."""
    if job.output or registry is None:
        _save(model, Path(job.output or tempfile.mkdtemp(prefix="adapterhub-")), outcome)
        if registry is not None:
            outcome.record = push_trained(registry, job.push, outcome, tags=job.tags)
        return
    with tempfile.TemporaryDirectory(prefix="adapterhub-") as staging:
        _save(model, Path(staging), outcome)
        outcome.record = push_trained(registry, job.push, outcome, tags=job.tags)
    outcome.adapter_dir = None


def _save(model, output: Path, outcome: TrainOutcome) -> None:
    adapters.save_adapter(model, output, outcome.manifest)
    outcome.adapter_dir, outcome.adapter_bytes = output, (output / adapters.WEIGHTS_FILE).stat().st_size


def push_trained(registry: Registry, name: str, outcome: TrainOutcome, *, tags: Sequence[str] = (),
                 continual: ContinualEntry | None = None) -> AdapterRecord:  # fmt: skip
    """Push the saved adapter of ``outcome`` as the next version of ``name``: its manifest (with ``continual``,
    a task sequence's entry, when given), its metrics and training time, ``tags``. The registry records the
    base fingerprint from the manifest's ``base``, its one home."""
    manifest = outcome.manifest if continual is None else dataclasses.replace(outcome.manifest, continual=continual)
    result = outcome.result
    return registry.push(
        name, outcome.adapter_dir, method=manifest.method, manifest=manifest.to_dict(),
        metrics={**result.metrics, "train_seconds": result.train_seconds}, tags=list(tags),
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
    placement: Placement | None = None,
    source: DataFile | None = None,
) -> dict:
    """Metrics of a registry adapter on the held-out split of ``data`` (default: the data it was trained on,
    read from the same path given again, split as recorded), with the base on ``placement``'s device and dtype."""
    placement = placement or Placement()
    device, dtype = resolve_placement(placement.device, placement.dtype)
    record, tensors = Registry(registry_root).load(ref)
    manifest = Manifest.from_dict(record.manifest)
    if data is None:
        raise OptionError("pass --data: the file the held-out split is taken from")
    model_task = manifest.model_task or LOAD_DEFAULT
    if source is None:  # else the caller read and checked it (``job_checks.checked_data``)
        source = checked_data(data, model_task, manifest.labels or None)  # a bad file fails before the base load
    base = load_base(base_path, model_task=model_task, quantize=quantize,
                     labels=manifest.labels or None, device=device, dtype=dtype)  # fmt: skip
    model = adapters.load_registry_adapter(base, record, tensors, force=force)
    settings = settings or TrainSettings(
        **{k: v for k, v in (manifest.training or {}).items() if k in TrainSettings.__dataclass_fields__}
    )
    prepared = prepare(base, data, settings, base.labels or None, source)
    if prepared.make_eval is None:
        raise OptionError(f"{data.path} gives no held-out examples; raise --test-split")
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        metrics = evaluate_batches(model, prepared.make_eval(), base.model_task)
    return {**metrics, **prepared.summary}
