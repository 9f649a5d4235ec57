"""How a failure becomes an HTTP answer: bad input a 4xx whose ``detail`` says what to fix, a damaged registry
entry (a fault of the server's storage) a 500 naming the entry, anything unexpected a logged 500.

``http_error`` maps an exception raised while serving a request to its status and message; ``create_app``
registers ``answer_http_error`` and ``answer_invalid_request``. An error body is ``{"detail": ...}`` on our own
routes and OpenAI's error object, ``{"error": {"message", "type", "param", "code"}}``, on the OpenAI-compatible
``/v1/`` routes and vLLM's tokenizer routes (whose clients parse that shape), where a body that does not validate is a
400, as OpenAI answers it, not FastAPI's 422.
"""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from adapterhub.continual.router import UnknownTaskError
from adapterhub.errors import AdapterHubError, IncompatibleBaseError
from adapterhub_registry import CorruptBlobError, InvalidNameError, NotFoundError, RegistryError

log = logging.getLogger("adapterhub.server")


class HTTPError(Exception):
    """A request's answer as an error: raised by handlers (or made by ``http_error``), answered as its ``detail``."""

    def __init__(self, status: int, detail: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.param, self.code = status, detail, param, code


def raised_by(setting: str) -> str:
    """How the server's operator raises the limit of ``ServerSettings.<setting>``: its `adapterhub serve` flag."""
    return f"`adapterhub serve --{setting.replace('_', '-')}` raises it"


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


OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
                409: "invalid_request_error", 413: "invalid_request_error", 503: "server_overloaded"}  # fmt: skip


VLLM_ROUTES = ("/tokenize", "/detokenize", "/tokenizer_info")  # vLLM's own: answered in OpenAI's shape, as vLLM does


def speaks_openai(path: str) -> bool:
    """Whether ``path``'s clients parse OpenAI's error object: the ``/v1/`` routes and vLLM's tokenizer routes."""
    return path.startswith("/v1/") or path in VLLM_ROUTES


def error_response(path: str, exc: HTTPError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The answer to ``exc`` for a request to ``path``: OpenAI's error object where clients expect it (see
    ``speaks_openai``), else ``{"detail"}``."""
    if not speaks_openai(path):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)
    kind = OPENAI_TYPES.get(exc.status, "server_error" if exc.status >= 500 else "invalid_request_error")
    body = {"error": {"message": exc.detail, "type": kind, "param": exc.param, "code": exc.code}}
    return JSONResponse(body, status_code=exc.status, headers=headers)


async def answer_http_error(request: Request, exc: HTTPError) -> JSONResponse:
    return error_response(request.url.path, exc)


async def answer_invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A body that is not JSON (saying where) or does not fit the endpoint's model (naming each field): 422, 400 where
    clients speak OpenAI."""
    errors = exc.errors()
    openai = speaks_openai(request.url.path)
    status = 400 if openai else 422
    not_json = next((e for e in errors if e["type"] == "json_invalid"), None)
    if not_json is not None:  # its loc is ("body", character offset): no field to name
        where = _line_and_column(exc.body, not_json["loc"][-1])
        problem = not_json.get("ctx", {}).get("error", "JSON decode error")
        return error_response(request.url.path, HTTPError(status, f"invalid request: the body is not valid JSON: {problem} "
                                                                  f"at {where}; send one JSON object"))  # fmt: skip
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
    param = next((str(e["loc"][-1]) for e in errors if len(e["loc"]) > 1), None) if openai else None
    return error_response(request.url.path, HTTPError(status, f"invalid request: {problems}", param=param))


def _line_and_column(document: object, offset: object) -> str:
    """``line L, column C`` (from 1) of the character at ``offset`` of ``document``, as Python's json reports them."""
    if not isinstance(document, (str, bytes)) or not isinstance(offset, int):
        return f"character {offset}"
    text = document.decode("utf-8", "replace") if isinstance(document, bytes) else document
    line = text.count("\n", 0, offset) + 1
    column = offset - text.rfind("\n", 0, offset)
    return f"line {line}, column {column} (character {offset})"
