"""What the server's handlers share: its settings and the ``AppState`` that ``create_app`` puts on ``app.state``.

Handlers take the state through ``StateDep`` (FastAPI resolves it from the request's app), so a handler is a
plain async function of its request body and an ``AppState``: a test may build the state from a tiny model and
call the handler directly or mount it alone on an app. A new endpoint that needs something more (another
scheduler, a model list) gets it as a field here.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from adapterhub.continual.router import Router
from adapterhub.runtime import AdapterPool
from adapterhub.server.batch_runs import batch_runner
from adapterhub.server.batcher import Batcher
from adapterhub.server.metrics import AlertThresholds, ServerMetrics


@dataclass(frozen=True)
class ServerSettings:
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    max_input_tokens: int = 512
    max_new_tokens: int = 256
    max_body_bytes: int = 1 << 20
    alerts: AlertThresholds = AlertThresholds()


@dataclass(frozen=True)
class AppState:
    """One served base: its adapter pool, the batcher that runs every model call on one worker thread, the
    optional task router (bound to ``pool``), the settings and the metrics."""

    pool: AdapterPool
    settings: ServerSettings
    metrics: ServerMetrics
    batcher: Batcher
    router: Router | None = None

    @classmethod
    def build(cls, pool: AdapterPool, settings: ServerSettings, router: Router | None = None,
              endpoints: Collection[str] = ()) -> AppState:  # fmt: skip
        """The state serving ``pool``; ``endpoints`` are the paths metrics count by name (others as "other")."""
        metrics = ServerMetrics(pool, settings.alerts, endpoints)
        batcher = Batcher(batch_runner(pool, router), max_batch_size=settings.max_batch_size,
                          max_wait_ms=settings.max_wait_ms, on_batch=lambda size, seconds: metrics.batch_size.observe(size))  # fmt: skip
        return cls(pool, settings, metrics, batcher, router)

    @property
    def model_task(self) -> str:
        """The base's model task: ``causal-lm`` (``/generate``) or ``seq-cls`` (``/classify``)."""
        return self.pool.base.model_task


def app_state(request: Request) -> AppState:
    """The state of the app serving ``request``."""
    return request.app.state.adapterhub


StateDep = Annotated[AppState, Depends(app_state)]
