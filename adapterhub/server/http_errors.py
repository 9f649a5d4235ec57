"""How a failure becomes an HTTP answer: bad input a 4xx whose ``detail`` says what to fix, a damaged registry
entry (a fault of the server's storage) a 500 naming the entry, anything unexpected a logged 500.

``http_error`` maps an exception raised while serving a request to its status and message; ``create_app``
registers ``answer_http_error`` and ``answer_invalid_request`` so every error body is ``{"detail": ...}``.
"""

from __future__ import annotations

import logging

from adapterhub_registry import CorruptBlobError, InvalidNameError, NotFoundError, RegistryError
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from adapterhub.continual.router import UnknownTaskError
from adapterhub.errors import AdapterHubError, IncompatibleBaseError

log = logging.getLogger("adapterhub.server")


class HTTPError(Exception):
    """A request's answer as an error: raised by handlers (or made by ``http_error``), answered as its ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def http_error(exc: Exception) -> HTTPError:
    """The status and message a caller gets for an error raised while serving its request."""
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, UnknownTaskError):
        return HTTPError(404, str(exc))
    if isinstance(exc, NotFoundError):
        return HTTPError(404, f"unknown adapter: {exc}. List loaded adapters with GET /adapters.")
    if isinstance(exc, InvalidNameError):
        return HTTPError(400, str(exc))
    if isinstance(exc, IncompatibleBaseError):
        return HTTPError(409, str(exc))
    if isinstance(exc, CorruptBlobError):  # the server's own storage is damaged: not the caller's fault
        log.error("damaged registry entry: %s", exc)
        return HTTPError(500, f"{exc}. This is a fault of the server's registry: its operator should run "
                              f"`adapterhub registry verify` there")  # fmt: skip
    if isinstance(exc, (AdapterHubError, RegistryError)):
        return HTTPError(400, str(exc))
    log.exception("request failed unexpectedly", exc_info=exc)
    return HTTPError(500, f"internal error ({type(exc).__name__}); the server logged the details")


async def answer_http_error(request: Request, exc: HTTPError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status)


async def answer_invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A body that is not JSON or does not fit the endpoint's model: 422 naming each field and what is wrong."""
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return JSONResponse({"detail": f"invalid request: {problems}"}, status_code=422)
