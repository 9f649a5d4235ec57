"""A training run's state (optimizer, scheduler, RNG states, monitor fields) written without pickle.

The project never unpickles (a checkpoint folder can come from anywhere: ``--checkpoint-dir``), so the state is
split in two files: every tensor into ``state.safetensors``, and the structure around them into ``state.json``,
with tags for what JSON lacks (tuples, non-string dict keys, sets, deques, and the alert dataclasses, the only
classes allowed back, by name from a fixed table). ``torch.save`` would write any object and ``torch.load`` run
any code a crafted file asks for.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from adapterhub.alerts import Alert, AlertRule

CLASSES = {cls.__name__: cls for cls in (Alert, AlertRule)}
"""The only classes a state may hold besides containers and tensors (the alert checker's records)."""


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().to("cpu").clone().contiguous()
        return {"__tensor__": key}
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, deque):
        return {"__deque__": [_encode(v, tensors) for v in value], "maxlen": value.maxlen}
    if isinstance(value, (set, frozenset)):
        return {"__set__": [_encode(v, tensors) for v in sorted(value, key=repr)]}
    if dataclasses.is_dataclass(value) and type(value).__name__ in CLASSES:
        fields = {f.name: _encode(getattr(value, f.name), tensors) for f in dataclasses.fields(value)}
        return {"__class__": type(value).__name__, "fields": fields}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a training state holds a {type(value).__name__}, which a checkpoint cannot store")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__dict__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__dict__"]}
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__deque__" in value:
        return deque((_decode(v, tensors) for v in value["__deque__"]), maxlen=value["maxlen"])
    if "__set__" in value:
        return {_decode(v, tensors) for v in value["__set__"]}
    if "__class__" in value:
        cls = CLASSES.get(value["__class__"])
        if cls is None:
            raise ValueError(f"unknown class {value['__class__']!r} in a checkpoint's state")
        return cls(**{name: _decode(v, tensors) for name, v in value["fields"].items()})
    raise ValueError(f"unreadable entry in a checkpoint's state: {sorted(value)}")


def save_state(state: dict[str, Any], directory: Path) -> list[str]:
    """Write ``state`` into ``directory``; returns the file names written."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, tensors)
    save_file(tensors, directory / "state.safetensors")
    (directory / "state.json").write_text(json.dumps(structure))
    return ["state.safetensors", "state.json"]


def load_state(directory: Path) -> dict[str, Any]:
    """The state ``save_state`` wrote into ``directory``."""
    tensors = load_file(directory / "state.safetensors")
    return _decode(json.loads((directory / "state.json").read_text()), tensors)
