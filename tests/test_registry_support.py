"""Shared helpers for the registry tests: tiny PEFT-format adapter directories and a fresh registry.

Kept in a test module (not conftest.py) so the registry's tests stay self-contained; the other
test_registry_* modules import from here. It holds no tests of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from adapterhub_registry import Registry

LORA_CONFIG = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}


def write_adapter(directory: Path, *, seed: int = 0, manifest: dict[str, Any] | None = None) -> Path:
    """A PEFT LoRA adapter directory with 2 tiny tensors; different seeds give different bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "base_model.model.q_proj.lora_A.weight": torch.randn(4, 8, generator=generator),
        "base_model.model.q_proj.lora_B.weight": torch.randn(8, 4, generator=generator),
    }
    save_file(tensors, directory / "adapter_model.safetensors", metadata={"format": "pt"})
    (directory / "adapter_config.json").write_text(json.dumps(LORA_CONFIG, indent=2))
    if manifest is not None:
        (directory / "adapterhub.json").write_text(json.dumps(manifest))
    return directory


def blob_files(registry: Registry) -> list[Path]:
    return sorted(p for p in (registry.root / "blobs" / "sha256").iterdir() if not p.name.startswith("."))


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    with Registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    return write_adapter(
        tmp_path / "adapter", seed=0, manifest={"task": "seq-cls", "description": "Sentiment on SST-2"}
    )
