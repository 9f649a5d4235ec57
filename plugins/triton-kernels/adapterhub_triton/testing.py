"""For tests: import the kernel modules so they run here, on a CUDA GPU or in Triton's CPU interpreter.

``triton.jit`` decides when a kernel is defined whether it compiles or interprets, reading
``TRITON_INTERPRET``. ``import_kernels`` sets it only while the kernel modules are first imported and puts
the environment back afterwards, so the rest of a test session (other plugins choosing kernels through
``supports``) still sees the machine as it is. ``TRITON_INTERPRET=0`` with a CUDA GPU tests the compiled
kernels on the GPU instead.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import torch

KERNEL_MODULES = ("bgmv", "sgmv", "fused_lora", "nf4_matmul")


def kernel_device() -> str:
    """ "cuda" when asked for the compiled kernels (TRITON_INTERPRET=0) and a GPU is there, else "cpu"."""
    return "cuda" if os.environ.get("TRITON_INTERPRET") == "0" and torch.cuda.is_available() else "cpu"


def import_kernels(*names: str) -> list[ModuleType]:
    """The kernel modules ``names`` (from ``KERNEL_MODULES``), interpreted unless ``kernel_device()`` is cuda."""
    qualified = [f"adapterhub_triton.{name}" for name in names]
    if kernel_device() == "cuda":
        return [importlib.import_module(name) for name in qualified]
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        for name in qualified:  # imported earlier without the interpreter: define the kernels again
            if name in sys.modules:
                importlib.reload(sys.modules[name])
        return [importlib.import_module(name) for name in qualified]
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
