"""One HTTP request handed from the ingress to a replica, and run there through the replica's own FastAPI app.

The ingress sends a ``Forwarded`` (method, path, headers, body, and the adapter key it resolved) through a Ray
Serve handle; the replica passes it to the app ``create_app`` built, as uvicorn would, and yields the answer as
it is sent: first a ``Start`` (status, headers), then the body's pieces (one per server-sent event when
streaming). So a replica answers every route exactly as one server does: same validation, limits, errors,
metrics. Written by hand (about 60 lines of ASGI) because httpx's ``ASGITransport`` buffers the whole body
before returning (no streaming) and cannot put the resolved key into the request's scope.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from adapterhub.server.openai_routes import RESOLVED_MODEL

log = logging.getLogger("adapterhub.server")


@dataclass(frozen=True)
class Forwarded:
    """What the ingress received, and the ``name@version`` it resolved ``model`` to (None: the base or no model)."""

    method: str
    path: str
    query_string: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    resolved_model: str | None = None


@dataclass(frozen=True)
class Start:
    """The first thing a replica yields for a request: the answer's status and headers."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key.lower() == name), None)


def _scope(request: Forwarded) -> dict:
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": request.method, "scheme": "http", "path": request.path, "raw_path": request.path.encode(),
        "query_string": request.query_string, "root_path": "", "headers": list(request.headers),
        "client": ("ray-serve-ingress", 0), "server": ("ray-serve-replica", 0), "state": {},
    }  # fmt: skip
    if request.resolved_model is not None:
        scope[RESOLVED_MODEL] = request.resolved_model
    return scope


async def call_app(app, request: Forwarded) -> AsyncIterator[Start | bytes]:
    """Run ``request`` through the ASGI ``app``; yield its ``Start``, then its body pieces as they are sent.

    Closing the generator early (the caller went away) tells the app the client disconnected and cancels it,
    which frees a streaming request's row in the engine (``_streamed``'s ``finally``).
    """
    sent: asyncio.Queue[dict] = asyncio.Queue()
    gone = asyncio.Event()
    body_given = False

    async def receive() -> dict:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await sent.put(message)

    running = asyncio.ensure_future(app(_scope(request), receive, send))
    try:
        while True:
            getting = asyncio.ensure_future(sent.get())
            await asyncio.wait({getting, running}, return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():  # the app returned: drain what it sent, then stop (or raise its error)
                getting.cancel()
                if not sent.empty():
                    continue
                running.result()
                return
            message = getting.result()
            if message["type"] == "http.response.start":
                yield Start(message["status"], tuple(message.get("headers", ())))
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    break
        # answered: let the app finish its bookkeeping (the metrics middleware runs after the last byte)
        outcome = (await asyncio.gather(running, return_exceptions=True))[0]
        if isinstance(outcome, Exception):
            log.error("the app failed after answering %s %s", request.method, request.path, exc_info=outcome)
    finally:
        gone.set()
        if not running.done():  # the caller went away before the answer's end
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
