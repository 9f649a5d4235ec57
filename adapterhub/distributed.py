"""Data-parallel training on an existing engine: ``torchrun`` or ``accelerate launch`` start the processes,
`accelerate` sets up the process group (gloo on CPU, nccl on GPU) and wraps the model (DDP, or FSDP when
``accelerate launch`` is configured for it). This module only decides which examples each rank trains on
and how numbers are combined across ranks, so that N processes train the same adapter as one process
with the same global batch.

How a global batch is shared: every rank draws the same shuffled order (same seed), cuts it into the same
global batches, and takes rows ``rank, rank + N, ...`` of each. Each rank scales its local mean loss by
``N * local_units / global_units`` (units: examples for classifiers, predicted tokens for causal LMs), so
the gradient DDP averages is exactly the gradient of the global batch's mean loss, even when the last
batch does not split evenly.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from adapterhub.errors import OptionError


def launched_world_size() -> int:
    """Processes in this run, as set by torchrun / accelerate launch (1 when started plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _close_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def launched_as_main() -> bool:
    """Whether this process is rank 0 (or the only one); readable before the process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class Distributed:
    """This process's place in the run. ``Distributed.single()`` is the plain one-process run."""

    rank: int = 0
    world_size: int = 1
    accelerator: Any = field(default=None, repr=False)

    @classmethod
    def single(cls) -> Distributed:
        return cls()

    @classmethod
    def from_environment(cls) -> Distributed:
        """Join the run torchrun / accelerate launch started, or a one-process run when there is none."""
        if launched_world_size() <= 1:
            return cls.single()
        from accelerate import Accelerator

        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not torch.cuda.is_available():
            raise OptionError("FSDP (from your accelerate config) needs GPUs and this machine has none; launch plain "
                              "data-parallel instead: torchrun, or accelerate launch --multi_gpu without FSDP")  # fmt: skip
        # cpu=True is what makes accelerate pick the gloo backend on machines without a GPU; without it, it
        # treats a CPU process under torchrun as a lone process.
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
        # Neither accelerate nor torch closes the group at exit, and a group torn down by interpreter shutdown
        # can crash or hang one rank (pytorch#190489); every rank closes it itself, once, after its last barrier.
        atexit.unregister(_close_process_group)  # registered once, however many runs this process starts
        atexit.register(_close_process_group)
        return cls(accelerator.process_index, accelerator.num_processes, accelerator)

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and pushes to the registry."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model wrapped for data-parallel training (DDP / FSDP), or unchanged in a one-process run."""
        return self.accelerator.prepare_model(model) if self.active else model

    def clip_grad_norm(self, parameters: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip the (already synchronised) gradients; returns their total norm before clipping."""
        if self.active:  # FSDP shards gradients: only the accelerator knows how to take their norm
            return self.accelerator.clip_grad_norm_(parameters, max_norm)
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def shard(self, rows: list[int]) -> list[int]:
        """This rank's rows of a global batch; every rank gets some while the batch has rows for all."""
        return rows[self.rank :: self.world_size]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (a no-op in one process)."""
        if not self.active:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def max(self, values: list[float]) -> list[float]:
        if not self.active:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return tensor.tolist()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.active:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.active:
            self.accelerator.wait_for_everyone()
