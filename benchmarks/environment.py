"""What a result was measured on: CPU model and cores, memory, GPU, library versions, load at start.

Recorded in every result file, because a number without its machine means little, and the load average
says how busy a shared machine was while it ran.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

from benchmarks.harness import cpu_count

PACKAGES = ("adapterhub", "adapterhub-registry", "torch", "peft", "transformers", "bitsandbytes", "safetensors")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def gpu_info() -> dict | None:
    import torch

    if not torch.cuda.is_available():
        return None
    properties = torch.cuda.get_device_properties(0)
    return {
        "name": properties.name,
        "memory_gb": round(properties.total_memory / 1024**3, 1),
        "capability": f"{properties.major}.{properties.minor}",
        "cuda": torch.version.cuda,
        "count": torch.cuda.device_count(),
    }


def describe(device: str) -> dict:
    """The machine and software a run measured, as a JSON-ready dict."""
    import psutil
    import torch

    return {
        "device": device,
        "cpu": cpu_model(),
        "cores": cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "gpu": gpu_info(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "git_commit": _git_commit(),
    }


def summary_line(environment: dict) -> str:
    """One line for the markdown report, e.g. `AMD EPYC, 2 cores, 23 GB; torch 2.13.0, peft 0.21.2, ...`."""
    packages = environment["packages"]
    gpu = environment["gpu"]
    hardware = f"{environment['cpu']}, {environment['cores']} cores, {environment['memory_gb']} GB RAM"
    if gpu:
        hardware += f"; GPU {gpu['name']} ({gpu['memory_gb']} GB, CUDA {gpu['cuda']})"
    software = ", ".join(
        f"{name} {packages[name]}" for name in ("torch", "peft", "transformers", "bitsandbytes") if packages.get(name)
    )
    load = environment.get("load_average")
    return f"{hardware}; {software}; Python {environment['python']}" + (
        f"; load average at start {load[0]}" if load else ""
    )
