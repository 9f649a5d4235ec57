"""A replica: one process with its own base, ``AdapterPool`` and continuous-batching engine, serving the one
server's app (``create_app``) to requests the ingress forwards through a Ray Serve handle.

Adapters are Ray Serve's multiplexed models, keyed by ``name@version``: the ingress resolves a request's ``model``
and sends it with ``multiplexed_model_id=key``; Ray routes it to a replica that already holds that key when one
does, and on this replica the ``@serve.multiplexed`` loader runs on a miss (read from the registry,
integrity- and base-checked, copied into a slot, on the model thread). Ray's per-replica model limit is the pool's
slot count, so what Ray believes a replica holds is what its slots hold. Ray's LRU drops a key without telling
the pool; the pool's own LRU (same capacity) evicts the slot when it needs it, so a row still running on an
adapter Ray has dropped is never disturbed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator

from prometheus_client import Counter
from ray import serve

from adapterhub.base import load_base, resolve_placement
from adapterhub.model_tasks import LOAD_DEFAULT
from adapterhub.runtime import AdapterPool
from adapterhub.server.app import create_app, lifespan
from adapterhub.server.ray_serve.asgi_call import Forwarded, Start, call_app
from adapterhub.server.ray_serve.board import REPORT_EVERY_S, ReplicaReport, board
from adapterhub.server.ray_serve.spec import ReplicaSpec
from adapterhub.settings import Placement
from adapterhub_registry import Registry

log = logging.getLogger("adapterhub.server")


class Replica:
    """The Ray Serve deployment class of the replicas (``launch.application`` wraps it with ``serve.deployment``).

    Its constructor is async (Ray runs it on the replica's event loop) so that the batcher and the engine's driver
    start on the loop every later request runs on."""

    async def __init__(self, spec: ReplicaSpec) -> None:
        device, dtype = resolve_placement(**vars(Placement(spec.device, spec.dtype)))
        base = load_base(spec.base, model_task=spec.model_task or LOAD_DEFAULT, quantize=spec.quantize,
                         labels=list(spec.labels) if spec.labels else None, device=device, dtype=dtype)  # fmt: skip
        self.pool = AdapterPool(base, slots=spec.slots, max_rank=spec.max_rank, host_capacity=spec.host_cache,
                                registry=Registry(spec.registry_root))  # fmt: skip
        for ref in spec.preload:
            self.pool.load(ref)
        # no --remote here: the ingress resolved (and fetched) every key into the registry these replicas read
        self.app = create_app(self.pool, spec.settings)
        self.state = self.app.state.adapterhub
        self.routed = Counter("adapterhub_routed_requests", "Adapter requests routed here, by whether this replica "
                              "already held the adapter (Ray Serve's multiplexed routing).", ["adapter_resident"],
                              registry=self.state.metrics.registry)  # fmt: skip
        self.id = serve.get_replica_context().replica_id.unique_id
        self._running = lifespan(self.app)  # the batcher and the engine's driver, on this replica's event loop
        await self._running.__aenter__()
        self._board = board()
        self._reporting = asyncio.get_running_loop().create_task(self._report_forever())

        async def load_into_pool(key: str) -> str:  # a plain function: Ray keeps its model cache on the function
            return await self._on_model_thread(self.pool.load, key)

        self._multiplexed = serve.multiplexed(max_num_models_per_replica=spec.slots)(load_into_pool)

    async def _on_model_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.state.batcher.worker, fn, *args)

    def _resident(self) -> tuple[str, ...]:
        return tuple(row["adapter"] for row in self.pool.describe() if row["tier"] in ("device", "peft"))

    async def forward(self, request: Forwarded) -> AsyncIterator[Start | bytes]:
        """Serve one forwarded request through the app; its adapter is made resident first (Ray's multiplex)."""
        key = serve.get_multiplexed_model_id() or request.resolved_model  # the latter alone: load-only routing
        if key:
            resident = key in await self._on_model_thread(self._resident)
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
