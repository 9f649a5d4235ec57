"""Merging registry adapters of one method into one, as a recorded and reproducible registry version.

``merge`` (``adapterhub merge``, ``adapterhub continual merge``) loads the inputs from the registry (checksummed),
asks their method how they combine (``MethodSpec.merge``: which inputs it refuses because peft would merge them
wrongly, which tensors are the per-module deltas, how peft combines them, what the merged config is), loads the
result back onto the base exactly as any pulled adapter is loaded, and pushes it with its recipe in the manifest
(``extra["merge"]``). ``replay`` runs a recorded recipe again and compares the sha256 of the weights. A method
without a merge spec is refused, naming it; the core knows no method's tensor or config names.

What is the same for every method is done here. Classification heads: peft refuses heads of several adapters
(``modules_to_save``). Heads over the same label list are combined here as the weighted mean (weights normalised
to sum 1; one full head per input, not a delta); different label lists are refused, naming them. Or the merge
keeps one input's own head (``head_from``): ``merge_sequence(heads="per-task")`` pushes one version per task,
each the merged adapter with that task's head, the way multi-task merging is evaluated (a shared body, a head
per task).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from adapterhub.errors import AdapterHubError, IncompatibleBaseError, OptionError
from adapterhub.manifest import BaseIdentity, ContinualEntry, Manifest
from adapterhub.specs import MergeSpec
from adapterhub_registry import AdapterRecord, Registry
from adapterhub_registry.adapter_dir import CONFIG_FILE, WEIGHTS_FILE
from adapterhub_registry.names import validate_name

COMBINATIONS = ("linear", "svd", "cat", "ties", "ties_svd", "dare_linear", "dare_ties", "magnitude_prune")
"""The combinations a recipe may name (peft's ``add_weighted_adapter`` names); each method's ``MergeSpec`` says
which of them it computes."""
PRUNING = ("ties", "ties_svd", "dare_linear", "dare_ties", "magnitude_prune")
"""The combinations that keep a fraction ``density`` of each delta (and need it)."""
HEADS = "weighted mean"
HEAD_MODES = ("mean", "per-task")
"""How ``continual merge`` treats the tasks' heads: one weighted-mean head, or one version per task with its own head."""


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a merge's weights: recorded in the manifest as ``merge``, replayed as is."""

    inputs: list[dict[str, str]]  # {"ref": "name@version", "sha256": blob sha256}, in merge order
    weights: list[float]
    combination: str
    density: float | None = None
    seed: int = 0
    peft: str = ""  # peft's version: another version may compute other bytes
    torch: str = ""
    heads: str | None = None  # how classification heads were combined, when there are any
    head_from: int | None = None  # the input whose own head the merge keeps (None: the weighted mean of all heads)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Recipe:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class MergeResult:
    recipe: Recipe
    sha256: str  # of the merged weights file, the registry blob
    seconds: float
    record: AdapterRecord | None = None  # the pushed version (None for a replay)
    notes: list[str] = field(default_factory=list)


def merge(
    registry: Registry,
    name: str,
    inputs: Sequence[str],
    base_path: str,
    *,
    weights: Sequence[float] | None = None,
    combination: str = "linear",
    density: float | None = None,
    seed: int = 0,
    tags: Sequence[str] = (),
    head_from: int | None = None,
    continual: ContinualEntry | None = None,
) -> MergeResult:
    """Merge the registry adapters ``inputs`` (refs) on the base at ``base_path`` and push the result as the
    next version of ``name``. ``weights`` default to equal ones summing to 1. ``head_from``: keep that input's
    own classification head (its labels and data record too) instead of the weighted mean of all heads;
    ``continual``: the merged version's place in a task sequence."""
    validate_name(name)  # fail on a bad name before the slow part
    records = [registry.resolve(ref) for ref in inputs]
    weights = list(weights) if weights else [1.0 / len(records)] * len(records)
    recipe = _recipe(records, weights, combination, density, seed, head_from)
    with tempfile.TemporaryDirectory(prefix="adapterhub-merge-") as directory:
        result, manifest = _merge_into(registry, records, recipe, base_path, Path(directory))
        if continual is not None:
            manifest = replace(manifest, continual=continual)
        result.record = registry.push(name, directory, method=manifest.method, manifest=manifest.to_dict(),
                                      tags=list(tags))  # fmt: skip
    return result


def merge_sequence(registry: Registry, sequence: str, base_path: str, *, name: str | None = None, heads: str = "mean",
                   tags: Sequence[str] = (), **recipe: Any) -> list[MergeResult]:  # fmt: skip
    """The task adapters of continual ``sequence``, in task order, merged; ``recipe``: ``merge``'s keywords.

    ``heads="mean"``: one version of ``name`` (default ``<sequence>-merged``) with the heads' weighted mean;
    tasks whose heads classify into other labels are refused, naming them (one head cannot answer for two
    label sets). ``heads="per-task"``: one version of ``<name>-<task>`` per task, the same merged adapter with that
    task's own head, labels and data record; together they form the sequence ``name`` (each keeps its task's
    router entry and tags), so ``Router.from_registry(name)``, ``serve --router name`` and ``continual eval PLAN
    --sequence name`` treat them as that sequence's task adapters.
    """
    from adapterhub.continual.plan import adapter_name, sequence_tag, task_tag
    from adapterhub.continual.router import Router

    if heads not in HEAD_MODES:
        raise OptionError(f"unknown heads mode {heads!r}; choose one of: {', '.join(HEAD_MODES)}")
    tasks = Router.from_registry(sequence, registry).tasks
    name = name or f"{sequence}-merged"
    refs = [t.ref for t in tasks]
    if heads == "mean":
        first = tasks[0]
        for task in tasks[1:]:
            if task.labels != first.labels:
                raise OptionError(
                    f"tasks of sequence {sequence!r} classify into different labels (task {first.name}: "
                    f"{', '.join(first.labels)}; task {task.name}: {', '.join(task.labels)}): one merged head cannot "
                    f"serve both; keep one head per task (--heads per-task) or route between the task adapters "
                    f"(adapterhub continual route)"
                )
        return [merge(registry, name, refs, base_path, tags=tags, **recipe)]
    validate_name(name)
    results = []
    for position, task in enumerate(tasks):
        entry = Manifest.from_dict(registry.resolve(task.ref).manifest).continual
        own = replace(entry, sequence=name, digest=None, extra={**entry.extra, "merged_from": task.ref})
        results.append(merge(registry, adapter_name(name, task.name), refs, base_path, head_from=position, continual=own,
                             tags=[*tags, sequence_tag(name), task_tag(task.name)], **recipe))  # fmt: skip
    return results


def replay(registry: Registry, ref: str, base_path: str) -> tuple[MergeResult, AdapterRecord]:
    """Run the recipe recorded on ``ref`` again; the caller compares ``result.sha256`` with ``record.blob_sha256``."""
    record = registry.resolve(ref)
    recorded = Manifest.from_dict(record.manifest).extra.get("merge")
    if not isinstance(recorded, dict):
        raise OptionError(f"{record.ref} records no merge recipe: it was not made by `adapterhub merge`")
    recipe = Recipe.from_dict(recorded)
    records = [registry.resolve(entry["ref"]) for entry in recipe.inputs]
    for entry, input_record in zip(recipe.inputs, records):
        if input_record.blob_sha256 != entry["sha256"]:
            raise AdapterHubError(
                f"input {entry['ref']} of {record.ref} has changed since the merge (sha256 {entry['sha256'][:12]} "
                f"recorded, {input_record.blob_sha256[:12]} now): the recipe cannot be replayed"
            )
    with tempfile.TemporaryDirectory(prefix="adapterhub-merge-") as directory:
        result, _ = _merge_into(registry, records, recipe, base_path, Path(directory))
    return result, record


def _recipe(records: list[AdapterRecord], weights: list[float], combination: str, density: float | None, seed: int,
            head_from: int | None = None) -> Recipe:  # fmt: skip
    import peft
    import torch

    if not records:
        raise OptionError("name at least one adapter to merge (--from REF)")
    if len(weights) != len(records):
        raise OptionError(
            f"--weights gives {len(weights)} weight(s) for {len(records)} adapter(s); give one per --from"
        )
    if combination not in COMBINATIONS:
        raise OptionError(f"unknown combination {combination!r}; choose one of: {', '.join(COMBINATIONS)}")
    if combination in PRUNING and density is None:
        raise OptionError(f"combination {combination} keeps a fraction of each delta: pass --density (e.g. 0.5)")
    if combination not in PRUNING and density is not None:
        raise OptionError(f"--density applies to {', '.join(PRUNING)}, not to {combination}; leave it out")
    if density is not None and not 0 < density <= 1:
        raise OptionError(f"--density must be in (0, 1], got {density}")
    if head_from is not None and not 0 <= head_from < len(records):
        raise OptionError(f"head_from={head_from} names no input: there are {len(records)}")
    return Recipe(inputs=[{"ref": r.ref, "sha256": r.blob_sha256} for r in records], weights=[float(w) for w in weights],
                  combination=combination, density=density, seed=seed, peft=peft.__version__,
                  torch=torch.__version__, head_from=head_from)  # fmt: skip


def _merge_into(registry, records, recipe: Recipe, base_path: str, directory: Path) -> tuple[MergeResult, Manifest]:
    """Merge, write the adapter directory, and load it back onto the base (the check before any push)."""
    import torch

    from adapterhub import adapters
    from adapterhub.base import load_base
    from adapterhub.model_tasks import LOAD_DEFAULT

    started = time.perf_counter()
    manifests = [Manifest.from_dict(r.manifest) for r in records]
    method, spec = _merge_spec(records, recipe.combination)
    _check_inputs(records, manifests, spec, own_heads=recipe.head_from is not None)
    first = manifests[0]
    head = (
        manifests[recipe.head_from] if recipe.head_from is not None else first
    )  # whose head (and labels) the output has
    base = load_base(base_path, model_task=first.model_task or LOAD_DEFAULT, labels=head.labels or None)
    loaded = [registry.load_record(r) for r in records]  # checksummed reads
    for record in records:
        adapters.check_base(base, record.base_fingerprint, record.ref)
    config, tensors = _combine(base, loaded, recipe, spec)
    if any(_head_keys(t, spec) for _, t in loaded):
        recipe = replace(
            recipe, heads=HEADS if recipe.head_from is None else f"own head of {records[recipe.head_from].ref}"
        )
    _write_adapter(directory, config, tensors)
    model = adapters.load_adapter_dir(base, directory)  # the same load as a pulled adapter: keys and shapes checked
    probe = base.tokenizer("merge check", return_tensors="pt")
    with torch.no_grad():
        logits = model(**probe).logits
    if not torch.isfinite(logits).all():
        raise AdapterHubError(
            f"the {recipe.combination} merge of {', '.join(r.ref for r in records)} gives non-finite outputs"
        )
    identity = first.base or BaseIdentity.from_dict(base.describe())
    # inputs trained on one data file with one split share a held-out set: `eval` of the merge then uses it too;
    # a merge keeping one input's head answers that input's task, so it takes that input's data record
    if recipe.head_from is not None:
        data = head.data
    else:
        data = first.data if all(m.data == first.data for m in manifests) else None
    manifest = Manifest(method=method, plugin=first.plugin, model_task=base.model_task, labels=base.labels or None,
                        base=identity, data=data, extra={"merge": recipe.to_dict()})  # fmt: skip
    sha256 = hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest()
    notes = []
    if recipe.heads == HEADS:
        notes.append(f"classification heads combined as the {HEADS} of the inputs' heads")
    elif recipe.heads:
        notes.append(f"classification head: the {recipe.heads} (labels {', '.join(head.labels or [])})")
    return MergeResult(recipe, sha256, time.perf_counter() - started, notes=notes), manifest


def _merge_spec(records: list[AdapterRecord], combination: str) -> tuple[str, MergeSpec]:
    """The inputs' one method and how it merges; refused when the inputs mix methods, when the method has no merge
    spec, or when it does not compute ``combination``."""
    from adapterhub import plugins

    first = records[0]
    for record in records[1:]:
        if record.method != first.method:
            raise OptionError(
                f"{record.ref} is an adapter of method {record.method!r}, {first.ref} of method {first.method!r}: "
                "merge adapters of one method"
            )
    catalog = plugins.catalog()
    spec = catalog.method(first.method)
    if spec.merge is None:
        plugin = catalog.plugin_of_method(spec.name)
        made_by = f" (plugin {plugin.distribution} {plugin.version})" if plugin else ""
        raise OptionError(
            f"{first.ref} is an adapter of method {spec.name!r}{made_by}, which does not support merging (the "
            "method gives no merge spec); merge adapters of a method with the capability 'mergeable' "
            "(`adapterhub plugins` lists them)"
        )
    if combination not in spec.merge.combinations:
        raise OptionError(
            f"method {spec.name!r} does not merge with {combination}; choose one of: "
            f"{', '.join(spec.merge.combinations)} (--combination)"
        )
    return spec.name, spec.merge


def _check_inputs(records: list[AdapterRecord], manifests: list[Manifest], spec: MergeSpec, *,
                  own_heads: bool = False) -> None:  # fmt: skip
    """Refuse inputs on different bases or model tasks, heads over different labels (unless the merge keeps one
    input's own head), and what the method says peft merges wrong."""
    first, first_manifest = records[0], manifests[0]
    for record, manifest in zip(records, manifests):
        if record.base_fingerprint != first.base_fingerprint:
            raise IncompatibleBaseError(
                f"{record.ref} was trained on base {record.base_fingerprint}, but {first.ref} on "
                f"{first.base_fingerprint}: merge adapters of one base only"
            )
        if manifest.model_task != first_manifest.model_task:
            raise OptionError(
                f"{record.ref} is a {manifest.model_task} adapter, {first.ref} a {first_manifest.model_task} one"
            )
        if not own_heads and list(manifest.labels or []) != list(first_manifest.labels or []):
            raise OptionError(
                f"{record.ref} classifies into {manifest.labels} but {first.ref} into {first_manifest.labels}: "
                "heads over different labels cannot be merged into one"
            )
        reason = spec.refuse(record.peft_config)
        if reason:
            raise OptionError(f"{record.ref} {reason}")


def _combine(base, loaded: list[tuple[AdapterRecord, dict]], recipe: Recipe, spec: MergeSpec) -> tuple[dict, dict]:
    """The inputs as adapters of one peft model, combined by their method; the heads' weighted mean beside it: the
    merged adapter's config (as adapter_config.json holds it) and tensors (in saved-key form)."""
    import torch
    from peft import PeftConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    names = [f"input{i}" for i in range(len(loaded))]
    model = None
    for adapter_name, (record, tensors) in zip(names, loaded):
        # no task type and no modules_to_save: peft refuses several adapters' heads, so they are combined apart
        values = {
            k: v for k, v in record.peft_config.items() if k not in ("auto_mapping", "task_type", "modules_to_save")
        }
        config = PeftConfig.from_peft_type(**values)
        if model is None:
            model = get_peft_model(base.model, config, adapter_name=adapter_name)
        else:
            model.add_adapter(adapter_name, config)
        heads = set(_head_keys(tensors, spec))
        set_peft_model_state_dict(
            model, {k: v for k, v in tensors.items() if k not in heads}, adapter_name=adapter_name
        )
    torch.manual_seed(recipe.seed)  # dare_* drop at random
    try:
        with torch.no_grad():
            spec.combine(model, names, recipe.weights, "merged", recipe.combination, recipe.density)
    except ValueError as exc:  # peft's reasons: ranks differ for linear/ties/dare, mixed target_modules kinds
        raise OptionError(
            f"peft cannot merge {', '.join(r.ref for r, _ in loaded)} with {recipe.combination}: {exc}"
        ) from None
    merged_config = model.peft_config["merged"]
    tensors = {
        k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model, adapter_name="merged").items()
    }
    model.unload()  # base.model without adapter layers again, for the check that loads the merged adapter onto it
    with contextlib.suppress(AttributeError):
        del base.model.peft_config
    first = loaded[0][0].peft_config
    recorded = {**_plain(merged_config.to_dict()), "inference_mode": True, "task_type": first.get("task_type"),
                "modules_to_save": first.get("modules_to_save")}  # fmt: skip
    config = spec.merged_config(recorded)
    if recipe.head_from is None:
        tensors.update(_mean_heads(loaded, recipe.weights, spec))
    else:
        own = loaded[recipe.head_from][1]
        tensors.update({key: own[key].clone().contiguous() for key in _head_keys(own, spec)})
    return config, tensors


def _head_keys(tensors: dict, spec: MergeSpec) -> list[str]:
    """The classification head's tensors (peft's ``modules_to_save``): every tensor that the method does not count
    among its per-module deltas."""
    return [key for key in tensors if not spec.is_delta(key)]


def _mean_heads(loaded: list[tuple[AdapterRecord, dict]], weights: list[float], spec: MergeSpec) -> dict:
    keys = [sorted(_head_keys(tensors, spec)) for _, tensors in loaded]
    if not keys[0]:
        return {}
    for (record, _), own in zip(loaded, keys):
        if own != keys[0]:
            raise OptionError(f"{record.ref} saves other head tensors ({own}) than {loaded[0][0].ref} ({keys[0]})")
    total = sum(weights)
    if total == 0:
        raise OptionError(
            "the weights sum to 0: the heads' weighted mean is undefined; give weights with a non-zero sum"
        )
    return {key: sum(w * tensors[key] for w, (_, tensors) in zip(weights, loaded)) / total for key in keys[0]}


def _plain(values: dict) -> dict:
    """A peft config dict as JSON with a stable text: enums as values, sets as sorted lists."""

    def plain(value):
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, (set, frozenset)):
            return sorted(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(v) for k, v in values.items()}


def _write_adapter(directory: Path, config: dict, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


EXPORT_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class MergedExport:
    directory: Path
    ref: str
    dtype: str
    dequantized_from: str | None  # the quantization the adapter was trained on (merged into its dequantized weights)
    notes: list[str] = field(default_factory=list)


def export_merged(
    registry: Registry, ref: str, base_path: str, out: str | Path, *, dtype: str = "float32"
) -> MergedExport:
    """A transformers model directory (safetensors, config, tokenizer) holding ``base_path`` with adapter ``ref``
    merged into its weights (peft's ``merge_and_unload``): ``from_pretrained`` loads it without peft or adapterhub.

    An adapter trained on a quantized base (NF4) learnt its delta against the dequantized weights, so it is merged
    into those, read back from the quantized base, and the model is written in ``dtype``, not re-quantized.
    """
    import torch

    from adapterhub import adapters, plugins
    from adapterhub.base import load_base
    from adapterhub.model_tasks import LOAD_DEFAULT

    if dtype not in EXPORT_DTYPES:
        raise OptionError(f"unknown --dtype {dtype!r}; choose one of: {', '.join(EXPORT_DTYPES)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OptionError(f"{out} already exists and is not an empty directory; choose a new one")
    record, tensors = registry.load(ref)
    if "merges-into-base" not in plugins.catalog().method(record.method).capabilities:
        raise OptionError(f"{record.ref} is a {record.method} adapter, which has no weights to merge into the base; "
                          "serve it with the adapter instead")  # fmt: skip
    manifest = Manifest.from_dict(record.manifest)
    quantization = manifest.base.quantization if manifest.base else None
    base = load_base(base_path, model_task=manifest.model_task or LOAD_DEFAULT, labels=manifest.labels or None,
                     quantize=quantization)  # fmt: skip
    notes = []
    if quantization:
        base.model.dequantize()
        notes.append(f"{record.ref} was trained on a {quantization} base: it is merged into the dequantized {quantization} "
                     f"weights and written in {dtype}; quantizing the merged model again loses quality")  # fmt: skip
    model = adapters.load_registry_adapter(base, record, tensors)
    merged = model.merge_and_unload().to(getattr(torch, dtype))
    merged.save_pretrained(out, safe_serialization=True)
    base.tokenizer.save_pretrained(out)
    return MergedExport(out, record.ref, dtype, quantization, notes)
