"""A stable identity for a base model, recorded in every adapter and checked when one is loaded.

The fingerprint is computed from the model *as shipped* — architecture, the dimensions that fix every
weight shape, and a sha256 over the weight files — so the same base loaded in fp32, bf16, NF4 or int8, or
for another task head, has one fingerprint: an adapter trained with QLoRA loads on the full-precision base.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".msgpack", ".h5")
SHAPE_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "vocab_size", "max_position_embeddings", "head_dim",
)  # fmt: skip


def weight_files(source: Path, gguf_file: str | None) -> list[Path]:
    """The files whose bytes are the base's weights."""
    if gguf_file is not None:
        return [source / gguf_file]
    return sorted(p for p in source.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(files: list[Path]) -> str:
    """sha256 over the files' own hashes, cached per (path, size, mtime) for the life of the process."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(
            path.name.encode() + b"\0" + _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns).encode()
        )
    return digest.hexdigest()


def fingerprint(config, files: list[Path]) -> dict:
    """``{"id": "<model_type>-<hash16>", "model_type", "shape", "content_sha256"}`` for a config and its weight files."""
    shape = {name: getattr(config, name) for name in SHAPE_FIELDS if getattr(config, name, None) is not None}
    content = content_hash(files)
    identity = json.dumps({"model_type": config.model_type, "shape": shape, "content": content}, sort_keys=True)
    short = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return {
        "id": f"{config.model_type}-{short}",
        "model_type": config.model_type,
        "shape": shape,
        "content_sha256": content,
    }
