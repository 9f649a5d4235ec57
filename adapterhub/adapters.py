"""Attach, save and load adapters of any method, through peft, in one place.

Every method plugin only maps its options to a peft config; this module is the shared mechanism:
``attach`` a new adapter to a frozen base, ``save_adapter`` in PEFT format plus our ``adapterhub.json``
sidecar (so a saved adapter *is* a PEFT directory), and ``load_adapter`` from a directory or from
tensors + config (registry), refusing an adapter trained on another base.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.utils.error import NoMatchingPeftModuleError
from safetensors import SafetensorError
from safetensors.torch import load

from adapterhub import plugins
from adapterhub.base import Base
from adapterhub.deprecation import moved_names
from adapterhub.errors import AdapterHubError, IncompatibleBaseError, OptionError
from adapterhub.job_checks import method_options
from adapterhub.manifest import BaseIdentity, Manifest, PluginIdentity
from adapterhub_registry import RegistryError
from adapterhub_registry.adapter_dir import (
    CONFIG_FILE,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    AdapterFiles,
    manifest_bytes,
    read_adapter_dir,
)
from adapterhub_registry.files import fsync_path

# plugins written against plugin API 1.0 import peft_task_type from here
__getattr__ = moved_names(
    __name__, {"peft_task_type": "adapterhub.model_tasks.peft_task_type"}, since="1.1", removed_in="1.3"
)


def make_options(method: str, values: dict[str, Any] | None = None) -> Any:
    """The options dataclass of ``method`` filled from ``values`` (validated, with clear errors)."""
    return method_options(method, values)


def attach(base: Base, method: str, options: Any = None) -> PeftModel:
    """Wrap the frozen base with a new, trainable adapter of ``method``; only adapter weights require grad."""
    spec = plugins.catalog().method(method)
    options = options if options is not None else make_options(method)
    config = spec.build_config(options, base)
    if base.quantization:
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(base.model, use_gradient_checkpointing=False)
    try:
        model = get_peft_model(base.model, config)
    except NoMatchingPeftModuleError:  # only the loaded base can tell that the names match none of its modules
        raise OptionError(
            f"method {method!r} option 'target_modules': {getattr(options, 'target_modules', None)} matches no module "
            f"of this base; its linear modules include: {', '.join(linear_module_names(base.model))}"
        ) from None
    if spec.dispatch is not None:  # the method sends its layers to a plugin kernel where one suits the base
        spec.dispatch(model)
    return model


def linear_module_names(model: torch.nn.Module, limit: int = 8) -> list[str]:
    """A few distinct short names of the model's linear layers (e.g. ``query``, ``v_proj``), for error messages."""
    names = dict.fromkeys(
        name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    )
    return list(names)[:limit]


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_manifest(base: Base, method: str, options: Any, **fields: Any) -> Manifest:
    """What adapterhub records beside the PEFT files: method and the plugin distribution providing it (named
    when a machine without it loads the adapter), options, model task, labels and the base's identity;
    ``fields`` sets more of the manifest's fields (``data``, ``data_summary``, ``training``)."""
    plugin = plugins.catalog().plugin_of_method(method)
    return Manifest(
        method=method,
        plugin=PluginIdentity(plugin.name, plugin.distribution, plugin.version) if plugin else None,
        options=dataclasses.asdict(options),
        model_task=base.model_task,
        labels=base.labels,
        base=BaseIdentity.from_dict(base.describe()),
        **fields,
    )


def save_adapter(model: PeftModel, directory: str | os.PathLike, manifest: Manifest) -> Path:
    """Write the adapter as a PEFT directory (safetensors + adapter_config.json) plus ``adapterhub.json``.

    Files are written in a temp directory inside ``directory``, flushed to disk, and only then moved into
    place one by one, so an interrupted save (or a full disk) never leaves a half-written file under its
    final name, and the temp directory is removed on any error.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".saving-") as staging:
            model.save_pretrained(staging, safe_serialization=True)
            (Path(staging) / MANIFEST_FILE).write_bytes(manifest_bytes(manifest.to_dict()))
            for name in (WEIGHTS_FILE, CONFIG_FILE, MANIFEST_FILE):
                fsync_path(Path(staging) / name)
            for name in (WEIGHTS_FILE, CONFIG_FILE, MANIFEST_FILE):
                os.replace(Path(staging) / name, directory / name)
            fsync_path(directory)
    except (OSError, SafetensorError) as exc:  # SafetensorError wraps the I/O error of writing the weights
        raise AdapterHubError(
            f"could not save the adapter in {directory}: {exc}; free some disk space or choose a writable directory"
        ) from exc
    return directory


def read_adapter(directory: str | os.PathLike) -> tuple[AdapterFiles, dict[str, torch.Tensor]]:
    """An adapter directory as the registry reads it (pickle weights refused with a fix-it message), and its
    weights as tensors."""
    try:
        files = read_adapter_dir(Path(directory))
    except RegistryError as exc:
        raise AdapterHubError(str(exc)) from None
    try:
        return files, load(files.weights)
    except SafetensorError as exc:
        raise AdapterHubError(
            f"{files.weights_path} is not a readable safetensors file ({exc}); save the adapter again"
        ) from None


def check_base(
    base: Base, adapter_base: str | None, adapter: str, *, force: bool = False, trained_on: BaseIdentity | None = None
) -> None:
    """Refuse an adapter trained on another base, naming both, unless ``force``; ``trained_on`` (the manifest's
    record of the base) lets the message say where to load the right one from."""
    if adapter_base and adapter_base != base.fingerprint_id and not force:
        loaded = BaseIdentity.from_dict(base.describe()).described()
        wanted = trained_on.described() if trained_on is not None else adapter_base
        load = f" (--base {trained_on.given})" if trained_on is not None and trained_on.given else ""
        raise IncompatibleBaseError(
            f"adapter {adapter} was trained on base {wanted}, but the loaded base is {loaded}. Load the base it "
            f"was trained on{load}, or pass --force if you know the weights are compatible."
        )


def load_adapter(
    base: Base,
    peft_config: dict,
    tensors: dict[str, torch.Tensor],
    *,
    adapter_base: str | None = None,
    label: str = "adapter",
    force: bool = False,
    trainable: bool = False,
    manifest: dict | None = None,
) -> PeftModel:
    """Attach an adapter given by its PEFT config and tensors to ``base``, exactly as saved.

    ``manifest`` (our ``adapterhub.json`` as stored) names the plugin that made the adapter, for the error when
    it is missing.
    """
    recorded = Manifest.from_dict(manifest or {})
    check_base(base, adapter_base, label, force=force, trained_on=recorded.base)
    plugin = recorded.plugin
    spec = plugins.catalog().method_for_peft_type(
        peft_config.get("peft_type", "?"), plugin.to_dict() if plugin else None
    )
    config = PeftConfig.from_peft_type(**{k: v for k, v in peft_config.items() if k != "auto_mapping"})
    config.inference_mode = not trainable
    try:
        model = get_peft_model(base.model, config)
    except ValueError as exc:  # peft's message names the target modules that the base lacks
        raise AdapterHubError(f"{label} does not fit this base ({base.fingerprint_id}): {exc}") from None
    try:
        set_peft_model_state_dict(model, tensors)
    except RuntimeError as exc:  # torch's "size mismatch for <key>: copying a param with shape ..."
        mismatch = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise AdapterHubError(
            f"{label} does not fit this base ({base.fingerprint_id}): {mismatch}; it was made for a model of another size"
        ) from None
    # compared in saved-key form: peft's load result lists prompt-learning tensors (loaded separately) as unexpected
    expected = set(get_peft_model_state_dict(model))
    unexpected = sorted(set(tensors) - expected)
    if unexpected:
        raise AdapterHubError(
            f"{label} has tensors the base model has no place for (e.g. {unexpected[0]}): "
            f"it was made for a different architecture"
        )
    missing = sorted(expected - set(tensors))
    if missing:
        raise AdapterHubError(f"{label} lacks tensors the method needs (e.g. {missing[0]}): the file is incomplete")
    if spec.after_load is not None:
        spec.after_load(model)
    if not trainable:
        model.eval()
    return model


def load_registry_adapter(base: Base, record, tensors: dict[str, torch.Tensor], *, force: bool = False) -> PeftModel:
    """A registry adapter (``Registry.load``'s record and tensors) attached to ``base``, refused on another base
    unless ``force``: what eval, prompting and merged exports load."""
    return load_adapter(base, record.peft_config, tensors, adapter_base=record.base_fingerprint, label=record.ref,
                        force=force, manifest=record.manifest)  # fmt: skip


def load_adapter_dir(base: Base, directory: str | os.PathLike, *, force: bool = False) -> PeftModel:
    """Load a saved adapter directory (ours or plain PEFT) onto ``base``."""
    files, tensors = read_adapter(directory)
    return load_adapter(
        base, files.peft_config, tensors, adapter_base=Manifest.from_dict(files.manifest).base_fingerprint,
        label=str(directory), force=force, manifest=files.manifest,
    )  # fmt: skip
