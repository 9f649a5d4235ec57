"""What every request passes through before its handler: the request metrics, the API key, the body size limit.

All three are plain ASGI middleware, not Starlette's ``BaseHTTPMiddleware``: a streamed answer (server-sent
events) passes through untouched, token by token, and a client that disconnects cancels the handler as it would
without middleware.

- ``Measure`` (outermost) refuses a body whose Content-Length is over the limit with a 413 before reading it,
  and times every answer into the app's metrics (a stream: until its last byte);
- ``RequireKey`` answers 401 to a request without ``Authorization: Bearer <key>`` when the server has a key,
  on every path but ``/health`` (load balancers probe it without credentials) and the web pages under ``/ui``
  (which sign in with the same key themselves, ``adapterhub.web.sessions``); it also takes the short-lived
  bearer tokens the playground page is given (``also_accept``);
- ``BodyLimit`` counts the bytes of a body as they arrive, for bodies sent without a Content-Length.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from fastapi import HTTPException

from adapterhub.server.http_errors import HTTPError, error_response, raised_by

OPEN_PATHS = frozenset({"/health"})
OPEN_PREFIX = "/ui/"  # the web pages: their own sign-in, sessions and CSRF tokens


class Measure:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope["app"].state.adapterhub
        started, status = time.perf_counter(), 500
        limit = state.settings.max_body_bytes
        length = dict(scope["headers"]).get(b"content-length", b"")

        async def noting_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if length.isdigit() and int(length) > limit:
                await error_response(
                    scope["path"], HTTPError(413, f"request body over {limit} bytes ({raised_by('max_body_bytes')})")
                )(scope, receive, noting_status)
            else:
                await self.app(scope, receive, noting_status)
        finally:
            state.metrics.observe(scope["path"], status, time.perf_counter() - started)


class RequireKey:
    def __init__(self, app, api_key: str | None, also_accept: Callable[[bytes], bool] | None = None) -> None:
        self.app = app
        self.expected = None if api_key is None else f"Bearer {api_key}".encode()
        self.also_accept = also_accept

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if (scope["type"] == "http" and self.expected is not None and path not in OPEN_PATHS
                and not path.startswith(OPEN_PREFIX) and path != OPEN_PREFIX.rstrip("/")):  # fmt: skip
            given = dict(scope["headers"]).get(b"authorization", b"")
            accepted = self.also_accept is not None and given and self.also_accept(given)
            if not hmac.compare_digest(given, self.expected) and not accepted:
                problem = "no API key given" if not given else "the API key is not valid"
                error = HTTPError(
                    401, f"{problem}: send the server's key as 'Authorization: Bearer <key>'", code="invalid_api_key"
                )
                await error_response(scope["path"], error, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Counts body bytes as they arrive, so a body sent without Content-Length (chunked) cannot get past the
    size limit either; the 413 is raised inside the endpoint's body read."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, f"request body over {self.limit} bytes ({raised_by('max_body_bytes')})")
            return message

        await self.app(scope, counted_receive, send)
