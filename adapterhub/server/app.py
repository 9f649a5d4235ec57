"""The HTTP app: one base model, many adapters, each request naming its own (``adapterhub serve`` runs it).

``create_app`` only assembles: it registers the endpoints of ``handlers.py`` (``/generate`` or ``/classify``,
``/adapters``, ``/adapters/load``, ``/adapters/unload``, ``/health``, ``/metrics``), the middleware of
``middleware.py`` (body limit, metrics), the error answers of ``http_errors.py``, and puts the ``AppState``
(``state.py``: pool, batcher, router, settings, metrics) on ``app.state``, where every handler reads it.
Requests that arrive together are batched across adapters by the ``Batcher``, which runs ``batch_runs.py`` on
its one worker thread; a failing request fails only itself, never the others batched with it. With a
continual-learning router (``--router``), a request may name a ``task`` of the sequence instead of an adapter,
or ``"task": "auto"`` to have the router pick one from the input. New endpoints are handlers on an ``APIRouter``
of their own module, added to ``ENDPOINTS``.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.middleware.base import BaseHTTPMiddleware

from adapterhub.continual.router import Router
from adapterhub.runtime import AdapterPool
from adapterhub.server import handlers
from adapterhub.server.http_errors import HTTPError, answer_http_error, answer_invalid_request
from adapterhub.server.middleware import BodyLimit, measure
from adapterhub.server.state import AppState, ServerSettings

__all__ = ["ServerSettings", "create_app"]
ENDPOINTS: tuple[APIRouter, ...] = (handlers.endpoints,)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The batcher's queue lives on the server's event loop: start it there, stop it when the server stops."""
    batcher = app.state.adapterhub.batcher
    batcher.start()
    yield
    await batcher.stop()


def create_app(pool: AdapterPool, settings: ServerSettings = ServerSettings(), router: Router | None = None) -> FastAPI:
    """The FastAPI app serving ``pool``'s base for its task; ``router`` (bound to ``pool``) adds task routing."""
    app = FastAPI(title="adapterhub", lifespan=lifespan)
    for endpoints in ENDPOINTS:
        app.include_router(endpoints)
    paths = {route.path for endpoints in ENDPOINTS for route in endpoints.routes}
    app.state.adapterhub = AppState.build(pool, settings, router, paths)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(BaseHTTPMiddleware, dispatch=measure)  # added last: outermost, so it sees every answer
    app.add_exception_handler(RequestValidationError, answer_invalid_request)
    app.add_exception_handler(HTTPError, answer_http_error)
    return app
