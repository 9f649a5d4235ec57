"""What every replica is built from: the ``adapterhub serve`` options that say which base, pool and settings.

The spec travels to each replica process (pickled by Ray), which loads its own base and pool from it; the
ingress reads the same settings (model name, API key, body limit).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapterhub.server.state import ServerSettings


@dataclass(frozen=True)
class ReplicaSpec:
    base: str  # local base model directory or .gguf file, at the same path on every node
    registry_root: Path  # every replica and the ingress read this registry (shared, or the same on each node)
    settings: ServerSettings = ServerSettings()
    model_task: str | None = None  # None: causal-lm
    quantize: str | None = None
    device: str = "auto"  # adapterhub.settings.Placement's values, resolved on each replica (its own GPU)
    dtype: str = "auto"
    labels: tuple[str, ...] | None = None
    slots: int = 8  # adapters in device slots per replica: also Ray's multiplexed models per replica
    max_rank: int = 16
    host_cache: int = 64
    preload: tuple[str, ...] = ()
    replicas: int = 2
    replica_cpus: float = 1.0  # Ray CPUs reserved per replica (a replica runs one model thread)
    remote: str | None = None  # --remote: the ingress resolves refs there (fetching into registry_root on a miss)
    reply_timeout_s: float = (
        300.0  # the longest the ingress waits for a replica's next piece (a whole unstreamed answer)
    )
    attempts: int = 3  # tries of a request whose replica died before any of its answer reached the client
    multiplexed: bool = True  # False: Ray routes by queue length alone (the benchmark's baseline)
