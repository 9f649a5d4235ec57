"""One server from one ``ServeSpec``: ``build_server`` loads the base, infers its model task and labels, builds the
adapter pool, loads what is to be served from the start and assembles the app.

The one way a server comes to be: ``adapterhub serve`` (flags -> spec -> here -> uvicorn), the Ray Serve launcher
(``completed_spec``, so a spec the replicas cannot serve fails once, at launch) and every Ray Serve replica (the
same spec -> here), so a replica serves exactly what one server would.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from fastapi import FastAPI

from adapterhub import plugins
from adapterhub.base import load_base, resolve_placement
from adapterhub.continual.router import Router
from adapterhub.errors import OptionError
from adapterhub.manifest import Manifest
from adapterhub.model_tasks import LOAD_DEFAULT
from adapterhub.runtime import AdapterPool
from adapterhub.server.app import create_app
from adapterhub.server.remote_refs import RemoteKeys, RemoteRefs
from adapterhub.server.settings import ServeSpec
from adapterhub.server.state import AppState
from adapterhub_registry import Registry


@dataclass(frozen=True)
class BuiltServer:
    """The app ``build_server`` assembled, the spec it served (model task and labels filled in) and the adapters
    it loaded at start (``name@version (kind)``), for the caller to report."""

    app: FastAPI
    spec: ServeSpec
    loaded: tuple[str, ...]

    @property
    def state(self) -> AppState:
        return self.app.state.adapterhub


def completed_spec(spec: ServeSpec, registry: Registry | RemoteKeys, router: Router | None = None) -> ServeSpec:
    """``spec`` with its model task and labels: as given, else the ``router`` sequence's, else those recorded in
    the first preloaded adapter's manifest, else the default model task (a classifier needs labels from somewhere).
    Reads the registry only (or, for replicas on a remote, the remote's entries): a spec that cannot be served
    fails before any base is loaded."""
    if router is not None and spec.model_task not in (None, router.model_task):
        raise OptionError(f"sequence {spec.router!r} is a {router.model_task} sequence; drop --model-task or pass "
                          f"--model-task {router.model_task}")  # fmt: skip
    first = None
    if spec.preload and router is None:
        first = Manifest.from_dict(registry.resolve(spec.preload[0]).manifest)
    model_task = spec.model_task or (router.model_task if router else first.model_task if first else None)
    model_task = model_task or LOAD_DEFAULT
    labels = spec.labels
    if model_task == "seq-cls" and not labels:
        if first is None and router is None:
            raise OptionError(
                "a seq-cls server needs --labels, an adapter to --load or a --router sequence (their labels are used)"
            )
        recorded = router.tasks[0].labels if router else first.labels
        labels = tuple(recorded) if recorded else None
    return dataclasses.replace(spec, model_task=model_task, labels=labels)


def open_remote(registry: Registry, name: str) -> RemoteRefs:
    """``--remote NAME`` of ``registry``: refs resolved there, fetched into ``registry`` on a miss."""
    return RemoteRefs(registry, registry.remote(name, stores=plugins.catalog().remote_store_specs()))


def build_server(spec: ServeSpec) -> BuiltServer:
    """The app serving ``spec``: its base loaded, its pool built and its ``preload`` adapters (and router
    sequence's) loaded. What is wrong with the placement, the registry refs or the router fails before the base
    loads."""
    device, dtype = resolve_placement(**vars(spec.placement))  # a GPU that is not there fails first
    registry = Registry(spec.registry_root)
    remote = open_remote(registry, spec.remote) if spec.remote is not None else None
    router = Router.from_registry(spec.router, registry) if spec.router else None
    spec = completed_spec(spec, registry, router)
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)  # process-wide: every forward of this server runs in this process
    base = load_base(spec.base, model_task=spec.model_task, quantize=spec.quantize,
                     labels=list(spec.labels) if spec.labels else None, device=device, dtype=dtype)  # fmt: skip
    pool = AdapterPool(base, slots=spec.slots, max_rank=spec.max_rank, host_capacity=spec.host_cache, registry=registry,
                       pack_weights={"auto": None, "on": True, "off": False}[spec.pack_weights])  # fmt: skip
    refs = (*spec.preload, *(task.ref for task in (router.tasks if router else ())))
    loaded = tuple(f"{key} ({pool.fetch(key).kind})" for key in map(pool.load, refs))
    if router is not None:
        router.bind(pool)  # features of the pooled base with no adapter active
    return BuiltServer(create_app(pool, spec.settings, router, remote), spec, loaded)
