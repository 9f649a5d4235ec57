"""Adapter save/load latency: adapterhub (save_adapter, Registry push/load, load_adapter) vs peft on one base.

Both sides work on the same loaded base model and the same LoRA adapter (r=16 on every linear layer):

* save — `adapters.save_adapter` (PEFT files + adapterhub.json, staged and renamed into place) vs
  `PeftModel.save_pretrained`;
* save + push — `save_adapter` then `Registry.push` (hash, fsync, index) vs `save_pretrained` alone, which
  is all plain peft does to keep an adapter;
* load from registry — `Registry.load` (sha256-checked) + `adapters.load_adapter` (base check, attach,
  set weights, completeness check) vs `PeftModel.from_pretrained(base, dir)`;
* load from directory — `adapters.load_adapter_dir` vs `PeftModel.from_pretrained`.

Each load is undone (`unload()`, untimed) so every run attaches to the bare base.
"""

from __future__ import annotations

import itertools
import shutil

from benchmarks import models
from benchmarks.harness import BASELINE, OURS, Context, Side

LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["all-linear"]}


def run(ctx: Context) -> None:
    import torch
    from peft import PeftModel

    from adapterhub import adapters
    from adapterhub.base import load_base
    from adapterhub_registry import Registry

    path, label = models.model_for(ctx)
    base = load_base(path, model_task="causal-lm")
    base.model.to(ctx.device)
    options = adapters.make_options("lora", LORA)
    model = adapters.attach(base, "lora", options)
    with torch.no_grad():  # lora_B starts at zero; give it values, as after training
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.02)
    manifest = adapters.build_manifest(base, "lora", options)
    size_mb = adapters.trainable_parameters(model) * 4 / 2**20
    ctx.settings.update(
        model=label, lora=LORA, adapter_mb=round(size_mb, 2), trainable_parameters=adapters.trainable_parameters(model)
    )
    params = {"adapter_mb": round(size_mb, 1)}

    with ctx.scratch("adapter-io") as root:
        registry = Registry(root / "registry")
        target = root / "out"

        def clear() -> None:
            shutil.rmtree(target, ignore_errors=True)

        pushes = itertools.count()

        def save_and_push(_) -> None:
            adapters.save_adapter(model, target, manifest)
            registry.push(f"bench-{next(pushes)}", target, method="lora", base_fingerprint=base.fingerprint_id)

        def save(_) -> None:
            adapters.save_adapter(model, target, manifest)

        def peft_save(_) -> None:
            model.save_pretrained(target)

        ctx.compare("save", Side(OURS, "adapters.save_adapter(model, dir, manifest)", save, clear),
                    Side(BASELINE, "PeftModel.save_pretrained(dir)", peft_save, clear), params=params)  # fmt: skip
        ctx.compare("save + push", Side(OURS, "save_adapter + Registry.push", save_and_push, clear),
                    Side(BASELINE, "PeftModel.save_pretrained(dir) (no store)", peft_save, clear), params=params)  # fmt: skip

        saved = adapters.save_adapter(model, root / "saved", manifest)
        registry.push("bench-load", saved, method="lora", base_fingerprint=base.fingerprint_id)
        model.unload()  # the base is bare again; each load below attaches anew and is unloaded after

        def load_from_registry() -> PeftModel:
            record, tensors = registry.load("bench-load")
            return adapters.load_adapter(base, record.peft_config, tensors, adapter_base=record.base_fingerprint,
                                         label=record.ref, manifest=record.manifest)  # fmt: skip

        loaded: list[PeftModel] = []

        def unload(_) -> None:
            loaded.pop().unload()

        def loading(impl: str, what: str, load) -> Side:
            return Side(impl, what, lambda: loaded.append(load()), teardown=unload)

        peft_load = loading(
            BASELINE, "PeftModel.from_pretrained(base, dir)", lambda: PeftModel.from_pretrained(base.model, saved)
        )
        ctx.compare("load from registry", loading(OURS, "Registry.load(ref) + adapters.load_adapter(base, config, tensors)",
                                                  load_from_registry), peft_load, params=params)  # fmt: skip
        ctx.compare("load from directory", loading(OURS, "adapters.load_adapter_dir(base, dir)",
                                                   lambda: adapters.load_adapter_dir(base, saved)), peft_load, params=params)  # fmt: skip
        registry.close()
    ctx.note(f"Base model: {label}, fp32, loaded once; both sides attach to the same module tree.")
    ctx.note("adapterhub's load also checks the base fingerprint and that every expected tensor is present; "
             "its registry path re-hashes the blob (sha256) on every read.")  # fmt: skip
