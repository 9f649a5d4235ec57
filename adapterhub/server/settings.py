"""The settings of a server (``ServerSettings``, ``AlertThresholds``) and what one is built from (``ServeSpec``):
the one place their defaults, limits and help live.

``adapterhub serve`` makes its flags from these fields (``adapterhub.options.setting_option``), ``build_server``
(``build.py``) builds a server from a ``ServeSpec``, and each Ray Serve replica gets one (``ray_serve/spec.py``).
Torch-free on purpose: the CLI imports this module to build ``--help``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from adapterhub.model_tasks import NAMES as MODEL_TASKS
from adapterhub.options import CheckedOptions, described, limited
from adapterhub.settings import Placement

__all__ = ["AlertThresholds", "ServeSpec", "ServerSettings", "default_model_name"]


@dataclass(frozen=True)
class AlertThresholds(CheckedOptions):
    """Warn in the log when the p95 latency over the last ``window`` requests, or the memory, goes above these."""

    p95_ms: float | None = limited(None, min=0, help="Log a warning when the p95 latency goes above this.")
    memory_mb: float | None = limited(None, min=0, help="Log a warning when process memory goes above this.")
    window: int = limited(200, min=1)


@dataclass(frozen=True)
class ServerSettings(CheckedOptions):
    """How one server batches, bounds and names what it serves; a value out of range fails when built."""

    max_batch_size: int = limited(16, min=1, help="Most requests of /generate and /classify run as one batch.")
    # longer waits batch more requests together at the price of each one's latency
    max_wait_ms: float = limited(5.0, min=0, max=60_000, help="How long a request waits for others to batch with.")
    max_input_tokens: int = limited(512, min=1, help="Longest prompt or text a request may send, in tokens.")
    max_new_tokens: int = limited(256, min=1, help="Largest max_new_tokens a request may ask.")
    max_body_bytes: int = limited(1 << 20, min=1, help="Largest request body, in bytes; larger ones get a 413.")
    alerts: AlertThresholds = dataclasses.field(default_factory=AlertThresholds)
    batching: str = limited(
        "continuous", choices=("continuous", "static"),
        help="How /v1/ completions are scheduled: rows join and leave at every step, or the static batcher (whole batches).",
    )  # fmt: skip
    max_running: int = limited(16, min=1, help="Rows of the continuous batch.")
    # bounds how long a newcomer's prefill stalls the rows already generating
    prefill_chunk: int = limited(
        128, min=1, help="Prompt tokens prefilled per step: the longest a newcomer's prefill holds the running rows."
    )
    # the KV entries of prompt prefixes kept per adapter version, so a shared system prompt is prefilled once
    prefix_cache_mb: float = limited(
        256,
        min=0,
        help="Memory for the KV entries of prompt prefixes reused by later requests for the same adapter version (0: off).",
    )
    max_waiting: int = limited(256, min=1, help="Requests queued beyond the running rows; more get a 503.")
    # `adapterhub serve` names the base after its directory or file instead (default_model_name)
    model_name: str = described(
        "base", help="The base's name as an OpenAI `model` [default: its directory or file name]."
    )
    api_key: str | None = described(None, help="Require 'Authorization: Bearer KEY' on every route but /health.")
    allow_lora_dir: Path | None = described(
        None, help="/v1/load_lora_adapter may import PEFT directories inside this directory."
    )
    top_adapters: int = limited(20, min=1)  # adapters shown by name in the per-adapter metrics; the rest are "other"


@dataclass(frozen=True)
class ServeSpec(CheckedOptions):
    """Everything ``build_server`` needs for one server: the base and how to load it, the adapter pool, what to
    load at start, the registry (and remote) adapters come from, and the ``ServerSettings``.

    ``model_task`` and ``labels`` left unset are inferred when the server is built (``build.completed_spec``):
    from the ``router`` sequence, else from the first ``preload`` adapter's manifest."""

    base: str = described(help="Local base model directory or .gguf file.")
    registry_root: Path | None = None  # None: $ADAPTERHUB_REGISTRY, else $ADAPTERHUB_HOME/registry
    settings: ServerSettings = dataclasses.field(default_factory=ServerSettings)
    model_task: str | None = limited(None, choices=MODEL_TASKS)
    quantize: str | None = described(None, help="Load the base quantized (e.g. nf4, int8).")
    placement: Placement = dataclasses.field(default_factory=Placement)
    labels: tuple[str, ...] | None = described(
        None, help="Comma-separated class names (seq-cls; default: from the first --load adapter)."
    )
    slots: int = limited(8, min=1, help="Adapters resident at once (per layer slots).")
    max_rank: int = limited(16, min=1, help="Largest LoRA rank a slot holds.")
    host_cache: int = limited(64, min=0, help="Adapters kept in host memory besides those in slots (0: only those in slots).")  # fmt: skip
    # torch's default is one intra-op thread per core; where other jobs share the cores, the threads wait for each
    # other at every op (docs/serving.md, "Threads")
    threads: int | None = limited(None, min=1, help="Torch intra-op threads for the model (default: torch's, one per core).")  # fmt: skip
    # a second, oneDNN-blocked copy of the base's float32 linear weights: a CPU decode step about twice as fast
    # (adapterhub/runtime/packed.py); auto packs only when the copy fits in half the free memory
    pack_weights: str = limited(
        "auto", choices=("auto", "on", "off"),
        help="Pack the base's float32 weights for the CPU's matmuls (a second copy; auto: when it fits in half the free memory).",
    )  # fmt: skip
    preload: tuple[str, ...] = described((), help="Adapter to load at start, repeatable.")
    router: str | None = described(
        None, help="Route requests naming a task (or task 'auto') to the adapters of this continual-learning sequence."
    )
    remote: str | None = described(
        None,
        help="Resolve /v1/ model refs on this remote of the registry (`adapterhub registry remote add`), fetching on a miss.",
    )


def default_model_name(base: str) -> str:
    """``models/smollm2`` -> ``smollm2``; ``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``SmolLM2-135M-Instruct.Q4_1``."""
    path = Path(base)
    return path.stem if path.suffix == ".gguf" else path.resolve().name
