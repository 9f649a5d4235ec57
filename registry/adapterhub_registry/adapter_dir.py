"""Reading and writing adapter directories: PEFT's two files plus the optional adapterhub.json sidecar.

This is the only module that knows the file names. Input directories are read without ever unpickling:
a directory that only offers `adapter_model.bin` / `*.pt` / `*.pth` / `*.pkl` is refused with a pointer
to safetensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterhub_registry.errors import RegistryError, UnsafeFileError
from adapterhub_registry.files import write_atomic

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MANIFEST_FILE = "adapterhub.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@dataclass(frozen=True)
class AdapterFiles:
    """The contents of an adapter directory, as read from disk."""

    config_text: str  # adapter_config.json verbatim
    peft_config: dict[str, Any]
    manifest: dict[str, Any]  # adapterhub.json, or {} when absent
    weights: bytes  # adapter_model.safetensors verbatim
    weights_path: Path


def read_adapter_dir(directory: Path) -> AdapterFiles:
    """Read a PEFT adapter directory; raise with a fix-it message when something is missing or unsafe."""
    if not directory.is_dir():
        raise RegistryError(
            f"{directory} is not a directory; pass the folder that holds {CONFIG_FILE} and {WEIGHTS_FILE}"
        )
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise UnsafeFileError(
                f"{directory} holds only pickle weights ({', '.join(pickles)}); pickle files are refused; "
                f"convert with safetensors (safetensors.torch.save_file(state_dict, '{WEIGHTS_FILE}')) "
                "or save the adapter with model.save_pretrained(dir, safe_serialization=True)"
            )
        raise RegistryError(
            f"{directory} has no {WEIGHTS_FILE}; save the adapter with model.save_pretrained(dir) first"
        )
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise RegistryError(f"{directory} has no {CONFIG_FILE}; save the adapter with model.save_pretrained(dir) first")
    config_text = _read_text(config_path)
    peft_config = _parse_object(config_text, config_path)
    if "peft_type" not in peft_config:
        raise RegistryError(f"{config_path} has no 'peft_type'; it is not a PEFT adapter config (save it with peft)")
    manifest_path = directory / MANIFEST_FILE
    manifest = _parse_object(_read_text(manifest_path), manifest_path) if manifest_path.is_file() else {}
    return AdapterFiles(config_text, peft_config, manifest, weights_path.read_bytes(), weights_path)


def write_files(directory: Path, files: dict[str, bytes]) -> None:
    """Write each file into `directory` (created if needed), each one atomically."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RegistryError(f"cannot create {directory}: {exc.strerror}; choose a writable destination") from exc
    for file_name, data in files.items():
        write_atomic(directory / file_name, data)


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RegistryError(f"{path} is not UTF-8 text; re-save it as JSON") from exc


def _parse_object(text: str, path: Path) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise RegistryError(f"{path} is not valid JSON ({exc}); fix or re-save it") from exc
    if not isinstance(value, dict):
        raise RegistryError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value
