"""Deploy ``adapterhub serve --replicas N`` on Ray Serve: the ``ReplicaBoard``, N replicas and the ingress.

``application(spec)`` is the Ray Serve application (bind graph): a test or a cluster's own driver runs it with
``serve.run``; ``serve_replicas`` is what the CLI calls: it starts (or joins, with ``RAY_ADDRESS``) a Ray
cluster, starts Serve's HTTP proxy on ``--host``/``--port`` and runs the application until interrupted.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
from ray import serve

from adapterhub.errors import OptionError
from adapterhub.server.ray_serve.board import board
from adapterhub.server.ray_serve.ingress import Ingress
from adapterhub.server.ray_serve.replica import Replica
from adapterhub.server.ray_serve.spec import ReplicaSpec
from adapterhub.server.state import ServerSettings

APP_NAME = "adapterhub"
HEALTH_CHECK_PERIOD_S = 2.0  # a replica that stops answering its health check is replaced within a few seconds


def application(spec: ReplicaSpec):
    """The Serve application: ``spec.replicas`` replicas (adapters as multiplexed models) behind one ingress."""
    if spec.replicas < 1:
        raise OptionError(f"--replicas {spec.replicas}: a Ray Serve application needs at least one replica")
    board(create=True)
    settings = spec.settings
    replicas = serve.deployment(
        Replica, name="replica", num_replicas=spec.replicas, ray_actor_options={"num_cpus": spec.replica_cpus},
        max_ongoing_requests=settings.max_running + settings.max_waiting,  # the engine queues; past that a 503
        health_check_period_s=HEALTH_CHECK_PERIOD_S, graceful_shutdown_timeout_s=5,
    )  # fmt: skip
    ingress = serve.deployment(Ingress, name="ingress", num_replicas=1, ray_actor_options={"num_cpus": 0},
                               max_ongoing_requests=10_000)  # it only awaits replicas  # fmt: skip
    return ingress.bind(replicas.bind(spec), spec)


def spec_from_options(params: dict) -> ReplicaSpec:
    """The replica spec from ``adapterhub serve``'s options (its click parameters, by name)."""
    from adapterhub.cli.serve import default_model_name
    from adapterhub.manifest import Manifest
    from adapterhub.server.prometheus import AlertThresholds
    from adapterhub_registry import Registry

    if params["sequence"]:
        raise OptionError(
            "--router is not served with --replicas yet: run one server for a continual-learning sequence"
        )
    settings = ServerSettings(params["max_batch_size"], params["max_wait_ms"], params["max_input_tokens"], params["max_new_tokens"],
                              alerts=AlertThresholds(params["alert_p95_ms"], params["alert_memory_mb"]), batching=params["batching"],
                              max_running=params["max_running"], prefill_chunk=params["prefill_chunk"], max_waiting=params["max_waiting"],
                              model_name=params["model_name"] or default_model_name(params["base"]), api_key=params["api_key"])  # fmt: skip
    registry = Registry(params["registry_root"])
    first = Manifest.from_dict(registry.resolve(params["preload"][0]).manifest) if params["preload"] else None
    labels = params["labels"].split(",") if params["labels"] else (first.labels if first else None)
    return ReplicaSpec(  # the model task and labels as one server infers them: given, else the first --load's
        base=str(Path(params["base"]).resolve()), registry_root=registry.root, settings=settings,
        model_task=params["model_task"] or (first.model_task if first else None), quantize=params["quantize"], device=params["device"], dtype=params["dtype"],
        labels=tuple(labels) if labels else None, slots=params["slots"],
        max_rank=params["max_rank"], host_cache=params["host_cache"], preload=tuple(params["preload"]),
        replicas=params["replicas"], remote=params["remote_name"],
    )  # fmt: skip


def serve_replicas(params: dict) -> None:
    """``adapterhub serve --replicas N``: deploy on Ray (a local one, or ``RAY_ADDRESS``'s) and block."""
    import ray

    if params["allow_lora_dir"]:
        raise OptionError("--allow-lora-dir is not served with --replicas: import PEFT directories with "
                          "`adapterhub registry import-peft` and name them by their ref")  # fmt: skip
    spec = spec_from_options(params)
    ray.init(include_dashboard=False)
    serve.start(http_options={"host": params["host"], "port": params["port"]})
    serve.run(application(spec), name=APP_NAME, route_prefix="/")
    click.echo(f"serving {spec.base} on {spec.replicas} Ray Serve replicas at http://{params['host']}:{params['port']} "
               f"(Ctrl+C stops)")  # fmt: skip
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
