"""What every request passes through before its handler: the body size limit and the request metrics.

``measure`` (outermost) refuses a body whose Content-Length is over ``max_body_bytes`` with a 413 and times
every answer into the app's metrics; ``BodyLimit`` counts the bytes of a body as they arrive, for bodies sent
without a Content-Length.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable

from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse

from adapterhub.server.state import app_state


class BodyLimit:
    """ASGI middleware counting body bytes as they arrive, so a body sent without Content-Length (chunked)
    cannot get past the size limit either; the 413 is raised inside the endpoint's body read."""

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
                    raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        await self.app(scope, counted_receive, send)


async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Answer 413 to a declared body over the limit before reading it; count and time every answer."""
    state = app_state(request)
    started = time.perf_counter()
    limit = state.settings.max_body_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        response = JSONResponse({"detail": f"request body over {limit} bytes"}, status_code=413)
    else:
        response = await call_next(request)
    state.metrics.observe(request.url.path, response.status_code, time.perf_counter() - started)
    return response
