"""The HTTP app: one base model, many adapters, each request naming its own (``build_server`` builds it for
``adapterhub serve`` and for each Ray Serve replica).

``create_app`` only assembles: it registers the endpoints of ``handlers.py`` (``/generate`` or ``/classify``,
``/adapters``, ``/adapters/load``, ``/adapters/unload``, ``/health``, ``/metrics``), the OpenAI-compatible ones of
``openai_routes.py`` (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``) and ``lora_routes.py``
(vLLM's ``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``), ``/docs`` (``api_docs.py``: Swagger UI from the
package, no CDN), the web pages under ``/ui`` (``adapterhub.web``:
the registry's pages, the serving views and the playground), the middleware of ``middleware.py`` (metrics,
API key, body limit), the error answers of ``http_errors.py``, and puts the ``AppState`` (``state.py``: pool,
batcher, continuous-batching engine, router, settings, metrics) on ``app.state``, where every handler reads it.
``/v1/`` completions run on the continuous-batching engine (``runtime/continuous.py``, driven by
``engine_driver.py``); ``/generate`` and ``/classify`` requests that arrive together are batched across adapters
by the ``Batcher``, which runs ``batch_runs.py``. Both run on one worker thread, the only one that touches the
model; a failing request fails only itself, never the others batched with it. With a
continual-learning router (``--router``), a request may name a ``task`` of the sequence instead of an adapter,
or ``"task": "auto"`` to have the router pick one from the input. New endpoints are handlers on an ``APIRouter``
of their own module, added to ``ENDPOINTS``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError

from adapterhub.continual.router import Router
from adapterhub.runtime import AdapterPool
from adapterhub.server import handlers, lora_routes, openai_routes, tokenize_routes
from adapterhub.server.api_docs import add_api_docs
from adapterhub.server.http_errors import HTTPError, answer_http_error, answer_invalid_request
from adapterhub.server.middleware import BodyLimit, Measure, RequireKey
from adapterhub.server.remote_refs import RemoteRefs
from adapterhub.server.settings import ServerSettings
from adapterhub.server.state import AppState
from adapterhub.web import Sessions, ui_router

__all__ = ["ServerSettings", "create_app"]
ENDPOINTS: tuple[APIRouter, ...] = (handlers.endpoints, openai_routes.openai_endpoints, lora_routes.lora_endpoints,
                                    tokenize_routes.tokenize_endpoints)  # fmt: skip
CLIENT_CLOSED = 499  # nginx's status for a request whose client went away before the answer


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The batcher's queue and the engine's driver live on the server's event loop: start them there, stop them
    when the server stops (the driver first: its steps run on the batcher's worker)."""
    state = app.state.adapterhub
    state.batcher.start()
    if state.driver is not None:
        state.driver.start()
    yield
    if state.driver is not None:
        await state.driver.stop()
    await state.batcher.stop()


async def answer_client_gone(request: Request, exc: openai_routes.ClientGone) -> Response:
    return Response(status_code=CLIENT_CLOSED)


def create_app(pool: AdapterPool, settings: ServerSettings | None = None, router: Router | None = None,
               remote: RemoteRefs | None = None) -> FastAPI:  # fmt: skip
    """The FastAPI app serving ``pool``'s base for its task; ``router`` (bound to ``pool``) adds task routing,
    ``remote`` resolves ``/v1/`` refs on a shared remote registry."""
    settings = settings or ServerSettings()
    app = FastAPI(title="adapterhub", lifespan=lifespan, docs_url=None, redoc_url=None)  # /docs: add_api_docs
    add_api_docs(app)
    for endpoints in ENDPOINTS:
        app.include_router(endpoints)
    paths = {route.path for endpoints in ENDPOINTS for route in endpoints.routes}
    app.state.adapterhub = AppState.build(pool, settings, router, paths, remote)
    sessions = Sessions(settings.api_key)  # the pages' sign-ins; their playground tokens are bearer keys here
    app.include_router(
        ui_router(pool.registry, api_key=settings.api_key, state=app.state.adapterhub, sessions=sessions)
    )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequireKey, api_key=settings.api_key, also_accept=sessions.accepts_bearer)
    app.add_middleware(Measure)  # added last: outermost, so it sees every answer, 401s included
    app.add_exception_handler(RequestValidationError, answer_invalid_request)
    app.add_exception_handler(HTTPError, answer_http_error)
    app.add_exception_handler(openai_routes.ClientGone, answer_client_gone)
    return app
