"""What every replica is built from: the ``ServeSpec`` of one server, plus how many replicas and how the ingress
reaches them.

The spec travels to each replica process (pickled by Ray), which builds its server from it with the one
``build_server``; the ingress reads the same settings (model name, API key, body limit) and the remote.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from adapterhub import packaged
from adapterhub.errors import OptionError
from adapterhub.options import limited
from adapterhub.server.settings import ServeSpec
from adapterhub_registry import Registry, default_root
from adapterhub_registry.remote_config import RemoteConfig, RemoteConfigs


@dataclass(frozen=True)
class ReplicaSpec(ServeSpec):
    """A ``ServeSpec`` served by ``replicas`` processes, its ``base`` at the same path on every node.

    Without ``remote``: ``registry_root`` is one registry every node sees (a shared file system); the ingress
    resolves refs in it and the replicas read it. With ``remote`` (its ``remote_config``, read once by the launcher
    from its own registry, travels with the spec): the ingress resolves refs on the remote alone and routes by the
    remote's ``name@version``; each replica fetches into a registry of its own node, ``registry_root`` when given
    (the same path on every node, each its own disk), else that node's default (``$ADAPTERHUB_HOME/registry``).
    Placement is resolved on each replica (its own GPU)."""

    replicas: int = limited(2, min=1)
    replica_cpus: float = limited(1.0, above=0)  # Ray CPUs reserved per replica (a replica runs one model thread)
    # the longest the ingress waits for a replica's next piece (a whole unstreamed answer)
    reply_timeout_s: float = limited(300.0, above=0)
    # tries of a request whose replica died before any of its answer reached the client
    attempts: int = limited(3, min=1)
    multiplexed: bool = True  # False: Ray routes by queue length alone (the benchmark's baseline)
    remote_config: RemoteConfig | None = None  # ``remote`` as configured where the launcher runs

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.remote is None) != (self.remote_config is None):
            raise OptionError(f"ReplicaSpec: remote={self.remote!r} with remote_config={self.remote_config!r}; "
                              "build it with ReplicaSpec.of, which reads the remote's configuration")  # fmt: skip

    @classmethod
    def of(cls, spec: ServeSpec, replicas: int) -> ReplicaSpec:
        """``spec`` served by ``replicas`` replicas, its paths absolute (a replica process does not share the
        launcher's working directory or environment) and its remote's configuration read from the launcher's
        registry (``NotFoundError`` naming the fix when there is no such remote)."""
        values = {field.name: getattr(spec, field.name) for field in dataclasses.fields(ServeSpec)}
        base = packaged.resolve(spec.base, packaged.BASE).resolve()
        if spec.remote is None:
            return cls(**{**values, "base": str(base), "registry_root": Registry(spec.registry_root).root},
                       replicas=replicas)  # fmt: skip
        given = Path(spec.registry_root).expanduser().absolute() if spec.registry_root is not None else None
        config = RemoteConfigs(given or default_root()).get(spec.remote)
        return cls(**{**values, "base": str(base), "registry_root": given}, replicas=replicas, remote_config=config)

    def replica_server(self) -> ServeSpec:
        """What each replica's server is built from: this spec without ``remote``, which the replica (mapping the
        remote's keys to its own registry's) and the ingress handle themselves."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(ServeSpec)}
        return ServeSpec(**{**values, "remote": None})
