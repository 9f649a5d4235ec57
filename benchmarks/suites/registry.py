"""Registry push/pull/list/search latency at 10, 1,000 and 10,000 adapters vs a folder of PEFT directories.

PEFT has no registry: without one, adapters are `save_pretrained` directories in a folder, and listing or
searching them means scanning the folder and reading every `adapter_config.json` (to know each adapter's
method). That folder is the baseline, filled with the same adapters as the registry:

* push — `Registry.push` (validate safetensors header, sha256, blob write + fsync + rename, one SQLite
  transaction) vs copying the saved adapter directory into the folder (`shutil.copytree`, no fsync);
* pull — `Registry.pull` (hash-checked blob read, writes the PEFT directory) vs `shutil.copytree` back out;
* list — `Registry.list()` (all 10,000 records, newest version each) vs scanning the folder and parsing
  every config; list first 50 — `Registry.list(limit=50)` (one page) vs sorting the folder's names and
  parsing 50 configs;
* search — `Registry.search(q)` (name, method, tag or description, first 50) vs the same scan filtered.

The pushed/pulled adapter is the size of a LoRA r=8 on q_proj/v_proj of SmolLM2-135M (1.8 MB); the
population is many small distinct adapters (their size does not affect list/search).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import BASELINE, OURS, Context, Side

SIZES = (10, 1_000, 10_000)
QUICK_SIZES = (10, 100)
TARGET_MS = 50.0
PAGE = 50
QUERY = "sentiment"
TOPICS = ("sentiment", "news", "code", "legal", "medical", "chat", "math", "translate")
METHODS = (("lora", "LORA"), ("ia3", "IA3"), ("adalora", "ADALORA"))
# SmolLM2-135M: 30 layers, hidden 576, k/v width 192. LoRA r=8 on q_proj (576->576) and v_proj (576->192).
LAYERS, HIDDEN, KV, RANK = 30, 576, 192, 8


def _config(peft_type: str, rank: int) -> dict:
    return {"peft_type": peft_type, "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 16,
            "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "SmolLM2-135M"}  # fmt: skip


def _lora_tensors(generator, layers: int, rank: int) -> dict:
    import torch

    tensors = {}
    for layer in range(layers):
        for module, d_out in (("q_proj", HIDDEN), ("v_proj", KV)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, HIDDEN, generator=generator)  # (r, d_in)
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(d_out, rank, generator=generator)  # (d_out, r)
    return tensors


def _write_adapter(directory: Path, config: dict, tensors: dict, manifest: dict | None = None) -> Path:
    """A PEFT adapter directory, as `save_pretrained` writes it (plus our manifest when given)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    if manifest is not None:
        (directory / "adapterhub.json").write_text(json.dumps(manifest))
    return directory


def _populate(ctx: Context, registry, folder: Path, n: int, staging: Path) -> None:
    """n small, distinct adapters, each pushed to the registry and saved into the folder."""
    import torch
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(ctx.seed)
    for i in tqdm(range(n), desc=f"registry: filling {n} adapters", leave=False, disable=not ctx.progress):
        topic, (method, peft_type) = TOPICS[i % len(TOPICS)], METHODS[i % len(METHODS)]
        name = f"{topic}-{method}-{i:05d}"
        config = _config(peft_type, 4)
        tensors = {"base_model.model.layer.lora_A.weight": torch.randn(4, 16, generator=generator)}
        manifest = {"description": f"{topic} adapter number {i}"}
        source = _write_adapter(staging / name, config, tensors, manifest)
        registry.push(name, source, method=method, tags=["prod"] if i % 10 == 0 else [])
        shutil.copytree(source, folder / name)
        shutil.rmtree(source)


def _scan(folder: Path) -> list[tuple[str, dict]]:
    """What `list` means without a registry: every adapter directory and its parsed config, by name."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            config = Path(entry.path) / "adapter_config.json"
            if entry.is_dir() and config.is_file():
                found.append((entry.name, json.loads(config.read_text())))
    return sorted(found)


def _page(folder: Path, limit: int = PAGE) -> list[tuple[str, dict]]:
    """The first `limit` adapters by name: the names still have to be listed and sorted, but only `limit`
    configs are parsed."""
    names = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    return [(name, json.loads((folder / name / "adapter_config.json").read_text())) for name in names[:limit]]


def _scan_search(folder: Path, query: str, limit: int = PAGE) -> list[tuple[str, dict]]:
    query = query.lower()
    return [(n, c) for n, c in _scan(folder) if query in n.lower() or query in c.get("peft_type", "").lower()][:limit]


def _fresh_adapters(staging: Path, generator) -> Callable[[], tuple[int, Path]]:
    """A setup function giving `(i, dir)` with new random weights each call (i = 0, 1, ...): pushing the same
    bytes again would only find the blob already stored."""
    counter = itertools.count()

    def fresh() -> tuple[int, Path]:
        i = next(counter)
        directory = staging / f"push-{id(counter)}-{i}"
        return i, _write_adapter(directory, _config("LORA", RANK), _lora_tensors(generator, LAYERS, RANK))

    return fresh


def _drop_source(state: tuple[int, Path]) -> None:
    shutil.rmtree(state[1])


def run(ctx: Context) -> None:
    import torch

    from adapterhub_registry import Registry

    sizes = QUICK_SIZES if ctx.quick else SIZES
    ctx.settings.update(
        sizes=list(sizes), query=QUERY, pushed_adapter_mb=round(LAYERS * RANK * (3 * HIDDEN + KV) * 4 / 2**20, 2)
    )
    generator = torch.Generator().manual_seed(ctx.seed + 1)
    with ctx.scratch("registry") as root:
        for n in sizes:
            registry, folder = Registry(root / f"registry-{n}"), root / f"folder-{n}"
            folder.mkdir()
            _populate(ctx, registry, folder, n, root / "staging")
            params = {"adapters": n}
            listing, _ = ctx.compare(
                "list",
                Side(OURS, "Registry.list()", registry.list),
                Side(BASELINE, "scan folder, parse every adapter_config.json", lambda: _scan(folder)),
                params=params,
            )
            page, _ = ctx.compare(
                "list first 50",
                Side(OURS, "Registry.list(limit=50)", lambda: registry.list(limit=PAGE)),
                Side(BASELINE, "sort folder names, parse the first 50 configs", lambda: _page(folder)),
                params=params,
            )
            found, _ = ctx.compare(
                "search",
                Side(OURS, f"Registry.search({QUERY!r}) (first 50)", lambda: registry.search(QUERY, limit=PAGE)),
                Side(
                    BASELINE, "scan folder, parse every config, filter (first 50)", lambda: _scan_search(folder, QUERY)
                ),
                params=params,
            )
            if n == max(SIZES):
                for measured in (listing, page, found):
                    ctx.check(f"{measured.case} at {n:,} adapters (median)", measured.stats.median, TARGET_MS)

            def push(state: tuple[int, Path]) -> None:
                registry.push(f"bench-push-{state[0]}", state[1], method="lora")

            def copy_in(state: tuple[int, Path]) -> None:
                shutil.copytree(state[1], folder / f"bench-push-{state[0]}")

            ctx.compare(
                "push",
                Side(OURS, "Registry.push(dir)", push, _fresh_adapters(root / "staging", generator), _drop_source),
                Side(
                    BASELINE,
                    "shutil.copytree(dir, folder/name)",
                    copy_in,
                    _fresh_adapters(root / "staging", generator),
                    _drop_source,
                ),
                params=params,
            )
            pulled = root / "pulled"

            def clear() -> None:
                shutil.rmtree(pulled, ignore_errors=True)

            ctx.compare(
                "pull",
                Side(OURS, "Registry.pull(ref, dir)", lambda _: registry.pull("bench-push-0", pulled), clear),
                Side(
                    BASELINE,
                    "shutil.copytree(folder/name, dir)",
                    lambda _: shutil.copytree(folder / "bench-push-0", pulled),
                    clear,
                ),
                params=params,
            )
            registry.close()
            shutil.rmtree(registry.root)
            shutil.rmtree(folder)
    ctx.note(
        "The registry is opened once per size and reused (library use); `adapterhub registry list` also opens it per call."
    )
    ctx.note(
        "Registry.push fsyncs the blob and commits one SQLite transaction; the folder baseline copies without fsync, so it is not crash-safe."
    )
