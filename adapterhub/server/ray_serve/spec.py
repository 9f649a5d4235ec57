"""What every replica is built from: the ``ServeSpec`` of one server, plus how many replicas and how the ingress
reaches them.

The spec travels to each replica process (pickled by Ray), which builds its server from it with the one
``build_server``; the ingress reads the same settings (model name, API key, body limit) and ``remote``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from adapterhub import packaged
from adapterhub.options import limited
from adapterhub.server.settings import ServeSpec
from adapterhub_registry import Registry


@dataclass(frozen=True)
class ReplicaSpec(ServeSpec):
    """A ``ServeSpec`` whose ``base`` and ``registry_root`` are at the same path on every node (shared, or the same
    on each), served by ``replicas`` processes. ``remote`` is the ingress's alone: it resolves (and fetches into
    ``registry_root``) every ref before a replica sees it. Its placement is resolved on each replica (its own GPU)."""

    replicas: int = limited(2, min=1)
    replica_cpus: float = limited(1.0, above=0)  # Ray CPUs reserved per replica (a replica runs one model thread)
    # the longest the ingress waits for a replica's next piece (a whole unstreamed answer)
    reply_timeout_s: float = limited(300.0, above=0)
    # tries of a request whose replica died before any of its answer reached the client
    attempts: int = limited(3, min=1)
    multiplexed: bool = True  # False: Ray routes by queue length alone (the benchmark's baseline)

    @classmethod
    def of(cls, spec: ServeSpec, replicas: int) -> ReplicaSpec:
        """``spec`` served by ``replicas`` replicas, its base and registry as absolute paths: a replica process
        does not share the launcher's working directory or environment."""
        values = {field.name: getattr(spec, field.name) for field in dataclasses.fields(ServeSpec)}
        base = packaged.resolve(spec.base, packaged.BASE).resolve()
        return cls(**{**values, "base": str(base), "registry_root": Registry(spec.registry_root).root},
                   replicas=replicas)  # fmt: skip

    def replica_server(self) -> ServeSpec:
        """What each replica builds its server from: this spec without ``remote`` (see the class docstring)."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(ServeSpec)}
        return ServeSpec(**{**values, "remote": None})
