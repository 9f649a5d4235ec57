"""Deploy ``adapterhub serve --replicas N`` on Ray Serve: the ``ReplicaBoard``, N replicas and the ingress.

``application(spec)`` is the Ray Serve application (bind graph): a test or a cluster's own driver runs it with
``serve.run`` (placing the deployments with Ray's own options where it needs to); ``serve_replicas`` is what the
CLI calls: it starts (or joins, with ``RAY_ADDRESS``) a Ray cluster, starts Serve's HTTP proxy on
``--host``/``--port`` and runs the application until interrupted.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import click
from ray import serve

from adapterhub.errors import OptionError
from adapterhub.server.build import completed_spec
from adapterhub.server.ray_serve.board import board
from adapterhub.server.ray_serve.ingress import Ingress
from adapterhub.server.ray_serve.replica import Replica
from adapterhub.server.ray_serve.spec import ReplicaSpec
from adapterhub.server.remote_refs import RemoteKeys
from adapterhub.server.settings import ServeSpec
from adapterhub_registry import Registry

APP_NAME = "adapterhub"
HEALTH_CHECK_PERIOD_S = 2.0  # a replica that stops answering its health check is replaced within a few seconds


def application(spec: ReplicaSpec, *, replica_options: Mapping[str, Any] | None = None,
                ingress_options: Mapping[str, Any] | None = None):  # fmt: skip
    """The Serve application: ``spec.replicas`` replicas (adapters as multiplexed models) behind one ingress.

    ``replica_options`` and ``ingress_options`` are added to each deployment's ``ray_actor_options``: a cluster's
    own driver places them with them, e.g. ``{"resources": {"adapterhub_replica": 1}}`` with that resource 1 on
    every node for one replica per node, or a ``runtime_env`` with each one's environment."""
    if spec.router is not None:
        raise OptionError(f"ReplicaSpec.router={spec.router!r}: a continual-learning sequence is not served on "
                          "replicas yet; serve it on one server (build_server)")  # fmt: skip
    board(create=True)
    settings = spec.settings
    replicas = serve.deployment(
        Replica, name="replica", num_replicas=spec.replicas,
        ray_actor_options={"num_cpus": spec.replica_cpus, **(replica_options or {})},
        max_ongoing_requests=settings.max_running + settings.max_waiting,  # the engine queues; past that a 503
        health_check_period_s=HEALTH_CHECK_PERIOD_S, graceful_shutdown_timeout_s=5,
    )  # fmt: skip
    ingress = serve.deployment(Ingress, name="ingress", num_replicas=1,
                               ray_actor_options={"num_cpus": 0, **(ingress_options or {})},
                               max_ongoing_requests=10_000)  # it only awaits replicas  # fmt: skip
    return ingress.bind(replicas.bind(spec), spec)


def replica_spec(spec: ServeSpec, replicas: int) -> ReplicaSpec:
    """What ``serve --replicas N`` deploys: ``spec`` with its model task and labels inferred here, once, so what the
    replicas cannot serve fails now instead of in every replica; with ``--remote`` the ``--load`` refs are pinned
    to the remote's ``name@version``, so every replica preloads the same versions."""
    spec = ReplicaSpec.of(spec, replicas)
    if spec.remote_config is None:
        return completed_spec(spec, Registry(spec.registry_root))
    remote = RemoteKeys(spec.remote_config)
    return completed_spec(dataclasses.replace(spec, preload=tuple(remote.resolve(r).ref for r in spec.preload)), remote)


def serve_replicas(spec: ServeSpec, replicas: int, host: str, port: int) -> None:
    """``adapterhub serve --replicas N``: deploy ``spec`` (``replica_spec``) on N replicas on Ray (a local one, or
    ``RAY_ADDRESS``'s), Serve's HTTP proxy on ``host``:``port``, and block."""
    import ray

    spec = replica_spec(spec, replicas)
    ray.init(include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(spec), name=APP_NAME, route_prefix="/")
    click.echo(f"serving {spec.base} on {spec.replicas} Ray Serve replicas at http://{host}:{port} (Ctrl+C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
