"""Structural validation of safetensors files before they enter the registry, and tensors viewed from a blob.

A blob is stored byte for byte and later handed to PEFT and the adapter pool, so a file that lies about
its layout must be refused at push time, with a message naming the file and the defect. The header is
parsed here by hand (8-byte little-endian length, then JSON) so every rule of the format is checked
explicitly; at push the file is then also loaded with `safetensors.torch.load` as a second opinion.

Loading reads the blob into one buffer and views each tensor in place (`TensorLayout.tensors`), after the
same header checks: copying every tensor out first, as `safetensors.torch.load` does, cost a third of a
registry-to-slot swap. Nothing here unpickles anything.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from adapterhub_registry.errors import UnsafeFileError

if TYPE_CHECKING:  # imported by the checks that need it: listing and tagging never load torch
    import torch

# Width in bits of every dtype the safetensors format defines (sub-byte float formats included).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
}
_MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces


@functools.cache
def torch_dtypes() -> dict[str, torch.dtype]:
    """The torch dtype of each safetensors dtype this torch has (newer float8 kinds may be missing)."""
    import torch

    return {
        name: getattr(torch, attr)
        for name, attr in {
            "BOOL": "bool", "U8": "uint8", "I8": "int8", "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn",
            "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E8M0": "float8_e8m0fnu",
            "I16": "int16", "U16": "uint16", "F16": "float16", "BF16": "bfloat16", "I32": "int32", "U32": "uint32",
            "F32": "float32", "I64": "int64", "U64": "uint64", "F64": "float64", "C64": "complex64",
        }.items()
        if hasattr(torch, attr)
    }  # fmt: skip


def check_safetensors(data: bytes, source: str) -> None:
    """Raise `UnsafeFileError` unless `data` is a well-formed safetensors file; `source` names it in messages."""
    header, data_start = _parse_header(data, source)
    _check_layout(header, len(data) - data_start, source)
    from safetensors.torch import load as load_safetensors

    try:
        load_safetensors(data)
    except Exception as exc:  # safetensors raises its own SafetensorError and also ValueError/RuntimeError
        raise UnsafeFileError(
            f"{source}: safetensors cannot load this file ({exc}); re-save it with safetensors"
        ) from exc


def checked_header(data: memoryview, source: str) -> tuple[dict[str, Any], int]:
    """The header of the safetensors file in `data` and where its tensor data starts, with every push check.

    Only the header bytes (`header_size` of them) are read, so the rest may still be arriving. Every range
    lies inside `data` and they tile it exactly, so `TensorLayout.tensors` can never reach outside the file. Raises
    `UnsafeFileError` naming `source` for a malformed file or a dtype this torch lacks.
    """
    header, data_start = _parse_header(data, source)
    _check_layout(header, len(data) - data_start, source)
    dtypes = torch_dtypes()
    for name, entry in header.items():
        if name != "__metadata__" and entry["dtype"] not in dtypes:
            import torch

            raise UnsafeFileError(
                f"{source}: tensor {name!r} has dtype {entry['dtype']}, which torch {torch.__version__} lacks; upgrade torch"
            )
    if sys.byteorder != "little":
        raise UnsafeFileError(
            f"{source}: safetensors data is little-endian and this CPU is not; load it on one that is"
        )
    return header, data_start


@dataclass(frozen=True)
class TensorLayout:
    """Where each tensor of a checked safetensors file lies, worked out once from its header (`checked_layout`).

    A registry blob is content-addressed, so one blob always has one layout: the registry keeps it by the blob's
    sha256 and a later load of the same blob skips the JSON parsing and the checks (the bytes are still
    checksummed on every read, so a damaged header is caught like any other damage). `views` holds, per tensor,
    the arguments of one `as_strided` on a typed alias of the buffer, computed here instead of on every load.
    """

    data_start: int
    # name, dtype, shape, strides, element offset
    views: tuple[tuple[str, torch.dtype, tuple[int, ...], tuple[int, ...], int], ...]
    unaligned: tuple[tuple[str, torch.dtype, tuple[int, ...], int, int], ...]  # name, dtype, shape, begin, end

    def tensors(self, buffer: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
        """The tensors of the file in `buffer` (1-D uint8 at storage offset 0) as views into it, and the copies
        still to make once all its bytes are in, as `(destination, source)` pairs.

        Making a view reads no data, so it can run while the bytes are still arriving; torch checks each view
        against the storage's bounds. A tensor whose offset is not a multiple of its item size (the format allows
        it; writers pad so it does not happen) cannot be a view: it gets its own memory and a pending copy.
        """
        import torch

        if buffer.storage_offset():
            raise ValueError("TensorLayout.tensors takes a buffer that starts its storage (offsets are absolute)")
        storage = buffer.untyped_storage()
        typed = {dtype: torch.empty(0, dtype=dtype).set_(storage) for dtype in {entry[1] for entry in self.views}}
        tensors = {
            name: typed[dtype].as_strided(shape, strides, offset) for name, dtype, shape, strides, offset in self.views
        }
        pending = []
        for name, dtype, shape, begin, end in self.unaligned:
            tensors[name] = torch.empty(shape, dtype=dtype)
            pending.append((tensors[name].view(-1).view(torch.uint8), buffer[begin:end]))
        return tensors, pending


def checked_layout(data: memoryview, source: str) -> TensorLayout:
    """The `TensorLayout` of the safetensors file in `data` (only its header needs to be in), after every check
    of `checked_header`; raises `UnsafeFileError` naming `source` like it."""
    header, data_start = checked_header(data, source)
    dtypes = torch_dtypes()
    views, unaligned = [], []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (begin, end) = dtypes[entry["dtype"]], tuple(entry["shape"]), entry["data_offsets"]
        if (data_start + begin) % dtype.itemsize:
            unaligned.append((name, dtype, shape, data_start + begin, data_start + end))
        else:
            views.append((name, dtype, shape, _contiguous_strides(shape), (data_start + begin) // dtype.itemsize))
    return TensorLayout(data_start, tuple(views), tuple(unaligned))


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def header_size(first_bytes: memoryview) -> int:
    """How many leading bytes of a safetensors file its header takes (length prefix included), from its first 8."""
    if len(first_bytes) < 8:
        return len(first_bytes)
    (length,) = struct.unpack("<Q", first_bytes[:8])
    return 8 + length


def _parse_header(data: bytes | memoryview, source: str) -> tuple[dict[str, Any], int]:
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
        header = json.loads(bytes(data[8 : 8 + length]).decode("utf-8"), object_pairs_hook=_refuse_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UnsafeFileError(f"{source}: header is not valid UTF-8 JSON ({exc}); the file is not safetensors") from exc
    if not isinstance(header, dict):
        raise UnsafeFileError(f"{source}: header must be a JSON object, got {type(header).__name__}")
    return header, 8 + length


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)  # called for each of a header's ~400 objects on every load: the common case stays cheap
    if len(result) != len(pairs):
        keys = [key for key, _ in pairs]
        raise ValueError(f"duplicate keys in {sorted(k for k in result if keys.count(k) > 1)}")
    return result


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
            raise UnsafeFileError(
                f"{source}: tensor {name!r} overlaps the previous tensor (offset {begin} < {position})"
            )
        if begin > position:
            raise UnsafeFileError(
                f"{source}: {begin - position} unused bytes before tensor {name!r} at offset {position}"
            )
        position = end
    if position > buffer_size:
        raise UnsafeFileError(
            f"{source}: tensor data ends at {position} but the file only has {buffer_size} data bytes"
        )
    if position < buffer_size:
        raise UnsafeFileError(f"{source}: {buffer_size - position} bytes of trailing garbage after the last tensor")


def _tensor_span(name: str, entry: Any, source: str) -> tuple[int, int]:
    if not isinstance(entry, dict):
        raise UnsafeFileError(f"{source}: header entry {name!r} must be an object with dtype, shape, data_offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise UnsafeFileError(
            f"{source}: tensor {name!r} has unknown dtype {dtype!r}; allowed: {', '.join(DTYPE_BITS)}"
        )
    if not _natural_numbers(shape):
        raise UnsafeFileError(
            f"{source}: tensor {name!r} has invalid shape {shape!r}; expected a list of non-negative ints"
        )
    if not (_natural_numbers(offsets) and len(offsets) == 2):
        raise UnsafeFileError(f"{source}: tensor {name!r} has invalid data_offsets {offsets!r}; expected [begin, end]")
    begin, end = offsets
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if end < begin or bits % 8 or end - begin != bits // 8:
        raise UnsafeFileError(
            f"{source}: tensor {name!r} data_offsets {offsets} span {end - begin} bytes, "
            f"but shape {shape} of {dtype} needs {bits / 8:g}"
        )
    return begin, end


def _natural_numbers(values: Any) -> TypeGuard[list[int]]:
    """`values` is a list of ints >= 0 (bools excluded). A plain loop: this runs twice per tensor on every load."""
    if type(values) is not list:
        return False
    for value in values:
        if type(value) is not int or value < 0:  # JSON gives exactly int, never a subclass but bool
            return False
    return True
