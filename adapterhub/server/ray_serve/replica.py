"""A replica: one process with its own base, ``AdapterPool`` and continuous-batching engine, serving the one
server's app (``build_server``, from the ``ReplicaSpec``) to requests the ingress forwards through a Ray Serve handle.

Adapters are Ray Serve's multiplexed models, keyed by ``name@version``: the ingress resolves a request's ``model``
and sends it with ``multiplexed_model_id=key``; Ray routes it to a replica that already holds that key when one
does, and on this replica the ``@serve.multiplexed`` loader runs on a miss (read from the registry,
integrity- and base-checked, copied into a slot, on the model thread). Ray's per-replica model limit is the pool's
slot count, so what Ray believes a replica holds is what its slots hold. Ray's LRU drops a key without telling
the pool; the pool's own LRU (same capacity) evicts the slot when it needs it, so a row still running on an
adapter Ray has dropped is never disturbed.

With ``--remote`` the keys are the remote's own ``name@version``: the replica maps each to the local key of its
node's own registry (``FetchedKeys``: fetched on the first request for it, off the model thread), and serves the
request under that local key, so no two nodes share a disk and no node's numbering leaks into another's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import AsyncIterator

from prometheus_client import Counter
from ray import serve

from adapterhub.server.app import lifespan
from adapterhub.server.build import build_server
from adapterhub.server.http_errors import error_response
from adapterhub.server.ray_serve.asgi_call import Forwarded, Start, call_app
from adapterhub.server.ray_serve.board import REPORT_EVERY_S, ReplicaReport, board
from adapterhub.server.ray_serve.spec import ReplicaSpec
from adapterhub.server.remote_refs import FetchedKeys, remote_http_error
from adapterhub_registry import Registry

log = logging.getLogger("adapterhub.server")


class Replica:
    """The Ray Serve deployment class of the replicas (``launch.application`` wraps it with ``serve.deployment``).

    Its constructor is async (Ray runs it on the replica's event loop) so that the batcher and the engine's driver
    start on the loop every later request runs on."""

    async def __init__(self, spec: ReplicaSpec) -> None:
        self.spec = spec
        server = spec.replica_server()  # the server one `adapterhub serve` would build, without --remote
        self.keys = None
        if spec.remote_config is not None:  # this node's own registry, fed from the remote
            self.keys = FetchedKeys.open(Registry(spec.registry_root), spec.remote_config)
            local = await asyncio.gather(*(asyncio.to_thread(self.keys.local_key, ref) for ref in spec.preload))
            server = dataclasses.replace(server, preload=tuple(local))
        self.app = build_server(server).app
        self.state = self.app.state.adapterhub
        self.pool = self.state.pool
        self.routed = Counter("adapterhub_routed_requests", "Adapter requests routed here, by whether this replica "
                              "already held the adapter (Ray Serve's multiplexed routing).", ["adapter_resident"],
                              registry=self.state.metrics.registry)  # fmt: skip
        self.id = serve.get_replica_context().replica_id.unique_id
        self._running = lifespan(self.app)  # the batcher and the engine's driver, on this replica's event loop
        await self._running.__aenter__()
        self._board = board()
        self._reporting = asyncio.get_running_loop().create_task(self._report_forever())

        async def load_into_pool(key: str) -> str:  # a plain function: Ray keeps its model cache on the function
            return await self._on_model_thread(self.pool.load, await self._local_key(key))

        self._multiplexed = serve.multiplexed(max_num_models_per_replica=spec.slots)(load_into_pool)

    async def _on_model_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.state.batcher.worker, fn, *args)

    async def _local_key(self, key: str) -> str:
        """The key this replica's registry serves ``key`` under (with ``--remote``, fetched on first use)."""
        return key if self.keys is None else await asyncio.to_thread(self.keys.local_key, key)

    def _resident(self) -> tuple[str, ...]:
        return tuple(row["adapter"] for row in self.pool.describe() if row["tier"] in ("device", "peft"))

    async def forward(self, request: Forwarded) -> AsyncIterator[Start | bytes]:
        """Serve one forwarded request through the app; its adapter is made resident first (Ray's multiplex)."""
        key = serve.get_multiplexed_model_id() or request.resolved_model  # the latter alone: load-only routing
        if key:
            try:
                local = await self._local_key(key)
            except Exception as exc:  # noqa: BLE001 - unknown, unreachable or refused on the remote: answered
                assert self.spec.remote_config is not None  # only the remote's keys are mapped
                answer = error_response(request.path, remote_http_error(exc, key, self.spec.remote_config))
                yield Start(answer.status_code, tuple(answer.raw_headers))
                yield bytes(answer.body)
                return
            request = dataclasses.replace(request, resolved_model=local)
            resident = local in await self._on_model_thread(self._resident)
            self.routed.labels("yes" if resident else "no").inc()
            try:
                await self._multiplexed(key)
            except Exception as exc:  # noqa: BLE001 - the app's own path answers it (404, 409, ...) with its message
                log.info("replica %s could not preload %s (%s); the request's answer will say why", self.id, key, exc)
        async for piece in call_app(self.app, request):
            yield piece

    async def report(self) -> ReplicaReport:
        """What this replica posts to the board: its metrics text, pid and resident adapters."""

        def read():  # on the model thread: the pool is not read while a step changes it
            return self.state.metrics.exposition().decode(), self._resident()

        exposition, resident = await self._on_model_thread(read)
        return ReplicaReport(self.id, os.getpid(), exposition, resident)

    async def _report_forever(self) -> None:
        while True:
            try:
                await self._board.post.remote(await self.report())
            except Exception:  # noqa: BLE001 - a missed report only ages this replica's metrics
                log.exception("replica %s could not post its report", self.id)
            await asyncio.sleep(REPORT_EVERY_S)

    async def __del__(self) -> None:
        """Ray Serve calls this when it stops the replica: stop reporting, then the engine's driver and batcher."""
        if hasattr(self, "_reporting"):  # not when __init__ failed before the app ran
            self._reporting.cancel()
            await self._running.__aexit__(None, None, None)
