"""What the server's handlers share: the ``AppState`` that ``create_app`` puts on ``app.state``.

Handlers take the state through ``StateDep`` (FastAPI resolves it from the request's app), so a handler is a
plain async function of its request body and an ``AppState``: a test may build the state from a tiny model and
call the handler directly or mount it alone on an app. A new endpoint that needs something more (another
scheduler, a model list) gets it as a field here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from adapterhub.continual.router import Router
from adapterhub.runtime import AdapterPool
from adapterhub.runtime.continuous import ContinuousEngine, Event
from adapterhub.server.adapter_metrics import AdapterMetrics
from adapterhub.server.batch_runs import batch_runner
from adapterhub.server.batcher import Batcher
from adapterhub.server.engine_driver import EngineDriver, Submitted
from adapterhub.server.prometheus import ServerMetrics
from adapterhub.server.remote_refs import RemoteRefs
from adapterhub.server.settings import ServerSettings  # defined there, torch-free, for the CLI; importable here too


@dataclass(frozen=True)
class AppState:
    """One served base: its adapter pool, the batcher that runs every model call on one worker thread, the
    optional task router (bound to ``pool``), the settings and the metrics."""

    pool: AdapterPool
    settings: ServerSettings
    metrics: ServerMetrics
    batcher: Batcher
    router: Router | None = None
    engine: ContinuousEngine | None = None  # continuous batching of /v1/ completions (causal LM, continuous)
    driver: EngineDriver | None = None
    adapter_metrics: AdapterMetrics = field(default_factory=AdapterMetrics)
    lora_names: dict[str, str] = field(default_factory=dict)  # lora_name -> name@version (/v1/load_lora_adapter)
    remote: RemoteRefs | None = None  # --remote: refs resolved on a shared remote registry, fetched on a miss

    @classmethod
    def build(cls, pool: AdapterPool, settings: ServerSettings, router: Router | None = None,
              endpoints: Collection[str] = (), remote: RemoteRefs | None = None) -> AppState:  # fmt: skip
        """The state serving ``pool``; ``endpoints`` are the paths metrics count by name (others as "other")."""
        metrics = ServerMetrics(pool, settings.alerts, endpoints)
        batcher = Batcher(batch_runner(pool, router), max_batch_size=settings.max_batch_size,
                          max_wait_ms=settings.max_wait_ms, on_batch=lambda size, seconds: metrics.batch_size.observe(size))  # fmt: skip
        per_adapter = AdapterMetrics(settings.top_adapters)
        metrics.registry.register(per_adapter)
        engine = driver = None
        if pool.base.model_task == "causal-lm" and settings.batching == "continuous":
            engine = ContinuousEngine(pool, max_running=settings.max_running, prefill_chunk=settings.prefill_chunk,
                                      prefix_cache_mb=settings.prefix_cache_mb)  # fmt: skip
            driver = EngineDriver(  # on the batcher's thread: one model thread
                engine, batcher.worker, _recorder(metrics, per_adapter), on_step=metrics.batch_size.observe
            )
            per_adapter.queue_depth, per_adapter.running_rows = (lambda: engine.queued), (lambda: engine.active)
        return cls(pool, settings, metrics, batcher, router, engine, driver, per_adapter, remote=remote)

    async def record_of(self, ref: str):
        """The registry record serving ``ref``: the local registry's, or with ``--remote`` the remote's version
        (fetched into the local registry on a miss), read off the event loop."""
        if self.remote is None:
            return self.pool.registry.resolve(ref)
        return await asyncio.to_thread(self.remote.resolve, ref)

    def answered_whole(self, label: str, tokens: int, seconds: float) -> None:
        """Count a generation answered whole (``/generate``, ``--batching static``): its tokens, in all and by
        adapter, and its time to first token, which for a whole answer is its latency."""
        self.metrics.tokens.inc(tokens)
        self.adapter_metrics.tokens(label, tokens)
        self.adapter_metrics.first_token(label, seconds)

    @property
    def context_length(self) -> int | None:
        """The most tokens (prompt and generated) the base's positions cover, when its config says."""
        return getattr(self.pool.base.model.config, "max_position_embeddings", None)

    @property
    def model_task(self) -> str:
        """The base's model task: ``causal-lm`` (``/generate``) or ``seq-cls`` (``/classify``)."""
        return self.pool.base.model_task


def _recorder(server: ServerMetrics, metrics: AdapterMetrics):
    """The driver's event callback: tokens (in all and by adapter), time to first token and the gaps between
    tokens, by adapter."""

    def record(request: Submitted, event: Event, now: float) -> None:
        if event.finish == "abort":
            metrics.cancel(request.label)
        if not event.tokens:
            return
        server.tokens.inc(event.tokens)
        metrics.tokens(request.label, event.tokens)
        if request.first_token_at is None:
            metrics.first_token(request.label, now - request.engine_request.arrived)
        else:
            metrics.between_tokens(request.label, (now - request.last_token_at) / event.tokens)

    return record


def app_state(request: Request) -> AppState:
    """The state of the app serving ``request``."""
    return request.app.state.adapterhub


StateDep = Annotated[AppState, Depends(app_state)]
