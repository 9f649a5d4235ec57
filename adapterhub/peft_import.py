"""Import a PEFT adapter directory into the registry under an installed method.

Used by ``adapterhub registry import-peft`` and the server's ``/v1/load_lora_adapter``: it maps the directory's
``peft_type`` to the method that loads it and, given a base, checks that the adapter actually loads onto that base
before recording it against it.
"""

from __future__ import annotations

from pathlib import Path

from adapterhub_registry import Registry


def import_peft(registry: Registry, directory: Path, name: str, *, base: str | None = None, tags=(), force=False):
    """Record a PEFT directory under ``name``; with ``base``, the adapter must load onto it first."""
    import dataclasses

    from adapterhub import adapters, plugins
    from adapterhub.base import load_base
    from adapterhub.manifest import BaseIdentity, Manifest
    from adapterhub.model_tasks import from_peft_task_type

    files, tensors = adapters.read_adapter(directory)
    peft_config = files.peft_config
    method = plugins.catalog().method_for_peft_type(peft_config.get("peft_type", "?"))
    manifest = dataclasses.replace(Manifest.from_dict(files.manifest), method=method.name, imported_from="peft")
    if base is not None:
        model_task = from_peft_task_type(peft_config.get("task_type"))
        labels = (manifest.labels or _labels_from_head(tensors)) if model_task == "seq-cls" else None
        loaded = load_base(base, model_task=model_task, labels=labels)
        recorded = manifest.base.fingerprint if manifest.base else None
        adapters.load_adapter(loaded, peft_config, tensors, label=str(directory), adapter_base=recorded, force=force)
        manifest = dataclasses.replace(manifest, model_task=model_task, labels=loaded.labels,
                                       base=BaseIdentity.from_dict(loaded.describe()))  # fmt: skip
    # the registry records the base fingerprint from the manifest's base (none: not recorded)
    return registry.push(name, directory, method=method.name, manifest=manifest.to_dict(), tags=tags)


def _labels_from_head(tensors: dict) -> list[str]:
    """Class names for a classifier adapter imported without them: one per row of its saved head."""
    heads = [t for key, t in tensors.items() if key.endswith(("classifier.weight", "score.weight", "out_proj.weight"))]
    n = heads[0].shape[0] if heads else 2
    return [f"LABEL_{i}" for i in range(n)]
