"""Rendering for every page: the Jinja2 environment (autoescape on), error pages, forms and the route class.

A handler raises ``PageError(status, message)`` for anything the user asked wrongly (a bad query, an unknown
adapter, a refused change); ``PageRoute`` turns it into the error page with that status, so no bad input ever
answers a 500 or a JSON body. Every page carries a Content-Security-Policy allowing this site's own scripts,
styles and images only: even text that slipped past escaping could not run an inline script.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")  # fmt: skip
MAX_FORM_BYTES = 64 * 1024

environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
    lstrip_blocks=True,
)  # fmt: skip
environment.filters["datetime"] = lambda seconds: time.strftime("%Y-%m-%d %H:%M", time.gmtime(seconds))


class PageError(Exception):
    """A request the page refuses: answered with the error page, ``status`` and ``message`` (which says what to do)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def render(template: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    html = environment.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": CSP, **(headers or {})})


def error_page(error: PageError, request: Request) -> HTMLResponse:
    titles = {400: "Bad request", 403: "Refused", 404: "Not found", 409: "Conflict"}
    common = getattr(request.state, "ui_common", None) or {"session": None, "serving": False, "can_sign_in": False}
    return render("error.html", error.status, title=titles.get(error.status, "Error"), message=error.message, **common)


class SignInFirst(Exception):
    """A page read without a session on a server with an API key: answered by a redirect to the sign-in page, which
    comes back to ``next`` (the page asked for) once the key is given."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def safe_next(value: str | None) -> str:
    """``value`` if it is a page of this UI (a path under /ui/, never another host), else the adapters page."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/adapters"


class PageRoute(APIRoute):
    """A route whose ``PageError`` becomes the error page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except PageError as error:
                return error_page(error, request)
            except SignInFirst as sign_in:
                return RedirectResponse("/ui/login?" + urlencode({"next": sign_in.next_url}), status_code=303)

        return handle


async def form_fields(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the last value of each), read without python-multipart."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise PageError(413, f"the form is over {MAX_FORM_BYTES} bytes; send less")
    content_type = request.headers.get("content-type", "")
    if body and not content_type.startswith("application/x-www-form-urlencoded"):
        raise PageError(400, "send the form as application/x-www-form-urlencoded, as the page's form does")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise PageError(400, "the form is not UTF-8 text") from None
    return {key: values[-1] for key, values in parsed.items()}


def query_fields(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query string's fields; any other field is a 400 naming the allowed ones."""
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        raise PageError(400, f"unknown filter {', '.join(map(repr, unknown))}; this page takes {', '.join(allowed)}")
    return {key: request.query_params.getlist(key)[-1] for key in request.query_params}


def positive_int(value: str | None, name: str, default: int, maximum: int | None = None) -> int:
    if value is None or value == "":
        return default
    if not re.fullmatch(r"[0-9]{1,15}", value) or int(value) < 1:
        raise PageError(400, f"{name}={value!r} is not a whole number from 1 (up to 15 digits); e.g. {name}={default}")
    number = int(value)
    if maximum is not None and number > maximum:
        raise PageError(400, f"{name}={number} is over the most this page shows, {maximum}; ask for {maximum} or fewer")
    return number
