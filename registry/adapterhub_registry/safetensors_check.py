"""Structural validation of safetensors files before they enter the registry.

A blob is stored byte for byte and later handed to `safetensors.torch.load` and to PEFT, so a file that
lies about its layout must be refused at push time, with a message naming the file and the defect. The
header is parsed here by hand (8-byte little-endian length, then JSON) so every rule of the format is
checked explicitly; the file is then also loaded with `safetensors.torch.load` as a second opinion.
Nothing here unpickles anything.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from safetensors.torch import load as load_safetensors

from adapterhub_registry.errors import UnsafeFileError

# Width in bits of every dtype the safetensors format defines (sub-byte float formats included).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64,
}
_MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces


def check_safetensors(data: bytes, source: str) -> None:
    """Raise `UnsafeFileError` unless `data` is a well-formed safetensors file; `source` names it in messages."""
    header, data_start = _parse_header(data, source)
    _check_layout(header, len(data) - data_start, source)
    try:
        load_safetensors(data)
    except Exception as exc:  # safetensors raises its own SafetensorError and also ValueError/RuntimeError
        raise UnsafeFileError(f"{source}: safetensors cannot load this file ({exc}); re-save it with safetensors") from exc


def _parse_header(data: bytes, source: str) -> tuple[dict[str, Any], int]:
    """Return the header object and the offset where tensor data starts."""
    if len(data) < 8:
        raise UnsafeFileError(f"{source}: file is {len(data)} bytes, too short for a safetensors header; re-save it")
    (length,) = struct.unpack("<Q", data[:8])
    if length > _MAX_HEADER_BYTES or 8 + length > len(data):
        raise UnsafeFileError(
            f"{source}: header length {length} goes beyond the file size {len(data)}; "
            "the file is truncated or not safetensors"
        )
    try:
        header = json.loads(data[8 : 8 + length].decode("utf-8"), object_pairs_hook=_refuse_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UnsafeFileError(f"{source}: header is not valid UTF-8 JSON ({exc}); the file is not safetensors") from exc
    if not isinstance(header, dict):
        raise UnsafeFileError(f"{source}: header must be a JSON object, got {type(header).__name__}")
    return header, 8 + length


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"duplicate keys in {sorted(k for k in set(keys) if keys.count(k) > 1)}")
    return dict(pairs)


def _check_layout(header: dict[str, Any], buffer_size: int, source: str) -> None:
    """Every tensor's byte range must match its shape x dtype, and the ranges must tile the buffer exactly."""
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise UnsafeFileError(f"{source}: __metadata__ must map strings to strings")
    spans = sorted(
        (_tensor_span(name, entry, source), name) for name, entry in header.items() if name != "__metadata__"
    )
    position = 0
    for (begin, end), name in spans:
        if begin < position:
            raise UnsafeFileError(f"{source}: tensor {name!r} overlaps the previous tensor (offset {begin} < {position})")
        if begin > position:
            raise UnsafeFileError(f"{source}: {begin - position} unused bytes before tensor {name!r} at offset {position}")
        position = end
    if position > buffer_size:
        raise UnsafeFileError(f"{source}: tensor data ends at {position} but the file only has {buffer_size} data bytes")
    if position < buffer_size:
        raise UnsafeFileError(f"{source}: {buffer_size - position} bytes of trailing garbage after the last tensor")


def _tensor_span(name: str, entry: Any, source: str) -> tuple[int, int]:
    if not isinstance(entry, dict):
        raise UnsafeFileError(f"{source}: header entry {name!r} must be an object with dtype, shape, data_offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise UnsafeFileError(f"{source}: tensor {name!r} has unknown dtype {dtype!r}; allowed: {', '.join(DTYPE_BITS)}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise UnsafeFileError(
            f"{source}: tensor {name!r} has invalid shape {shape!r}; expected a list of non-negative ints"
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and o >= 0 for o in offsets)):
        raise UnsafeFileError(f"{source}: tensor {name!r} has invalid data_offsets {offsets!r}; expected [begin, end]")
    begin, end = offsets
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if end < begin or bits % 8 or end - begin != bits // 8:
        raise UnsafeFileError(
            f"{source}: tensor {name!r} data_offsets {offsets} span {end - begin} bytes, "
            f"but shape {shape} of {dtype} needs {bits / 8:g}"
        )
    return begin, end


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
