"""Training checkpoints: what a run needs to continue exactly where it stopped, written every N steps by the
training loop (``adapterhub.train``) and read back by ``adapterhub train --resume``.

A checkpoint is a folder ``step-<NNNNNNNN>`` holding ``adapter.safetensors`` (the trainable weights),
``state.safetensors`` + ``state.json`` (optimizer, scheduler, gradient scaler, RNG states, data position,
monitor and early-stopping state, written without pickle: ``checkpoint_state``) and ``run.json`` (the run's identity: base, method, options, data, settings). It is written into a
temporary folder, every file fsynced, ``run.json`` last, then renamed into place: a folder named ``step-*``
is complete, and a crash mid-write leaves only a ``.tmp-*`` folder that is ignored and cleared. The newest
``keep`` checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from adapterhub.checkpoint_state import load_state, save_state
from adapterhub.errors import OptionError
from adapterhub_registry.files import fsync_path

PREFIX = "step-"
IDENTITY_FILE = "run.json"


def default_directory(identity: dict) -> Path:
    """``$ADAPTERHUB_HOME/checkpoints/<hash of the run's identity>``: the same command line finds the same folder."""
    from adapterhub_registry import default_root

    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return default_root().parent / "checkpoints" / digest


def _differences(recorded: Any, current: Any, path: str = "") -> list[str]:
    """``name: recorded -> current`` for each leaf that differs between two JSON-like values."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(recorded) | set(current), key=str):
            found += _differences(recorded.get(key), current.get(key), f"{path}.{key}" if path else str(key))
        return found
    return [] if recorded == current else [f"{path}: {recorded!r} in the checkpoint, {current!r} now"]


@dataclass
class Checkpoint:
    """One complete checkpoint folder."""

    path: Path
    step: int

    def adapter(self) -> dict[str, torch.Tensor]:
        return load_file(self.path / "adapter.safetensors")

    def state(self) -> dict[str, Any]:
        return load_state(self.path)


class CheckpointStore:
    """The checkpoint folder of one run: write, prune, and find the newest complete checkpoint."""

    def __init__(self, directory: str | os.PathLike | None, identity: dict, every: int, keep: int = 2) -> None:
        self.identity = json.loads(json.dumps(identity, default=str))  # as it reads back from run.json
        self.directory = Path(directory).expanduser() if directory else default_directory(self.identity)
        self.every, self.keep = every, keep

    def complete(self) -> list[Checkpoint]:
        """The complete checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [Checkpoint(p, int(p.name[len(PREFIX):])) for p in self.directory.glob(f"{PREFIX}*")
                 if p.name[len(PREFIX):].isdigit() and (p / IDENTITY_FILE).is_file()]  # fmt: skip
        return sorted(found, key=lambda c: c.step)

    def newest(self) -> Checkpoint | None:
        """The newest complete checkpoint, refused when another run (other settings, base, data) wrote it."""
        found = self.complete()
        if not found:
            return None
        newest = found[-1]
        recorded = json.loads((newest.path / IDENTITY_FILE).read_text())
        differences = _differences(recorded, self.identity)
        if differences:
            raise OptionError(f"checkpoint {newest.path} is from another run ({'; '.join(differences[:3])}): resume with "
                              "the same command line, or pass another --checkpoint-dir")  # fmt: skip
        return newest

    def clear(self) -> None:
        """Remove the checkpoints of an earlier run in this folder (a fresh run starts from step 0)."""
        for checkpoint in self.complete():
            shutil.rmtree(checkpoint.path)
        self._remove_partial()

    def write(self, step: int, adapter: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
        """Write checkpoint ``step`` atomically, then drop all but the newest ``keep``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"{PREFIX}{step:08d}"
        staging = self.directory / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        save_file({name: tensor.detach().to("cpu").contiguous() for name, tensor in adapter.items()},
                  staging / "adapter.safetensors")  # fmt: skip
        state_files = save_state(state, staging)
        (staging / IDENTITY_FILE).write_text(json.dumps(self.identity, indent=1, sort_keys=True))
        for name in ("adapter.safetensors", *state_files, IDENTITY_FILE):
            fsync_path(staging / name)
        fsync_path(staging)
        if final.exists():  # the same step written again (a resumed run repeating it)
            shutil.rmtree(final)
        os.replace(staging, final)
        fsync_path(self.directory)
        for old in self.complete()[: -self.keep]:
            shutil.rmtree(old.path)
        return final

    def _remove_partial(self) -> None:
        for partial in self.directory.glob(f".tmp-{PREFIX}*"):
            shutil.rmtree(partial, ignore_errors=True)
