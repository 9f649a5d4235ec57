"""The UI as a router (``ui_router``: mounted at ``/ui`` by ``adapterhub serve``) or an app of its own (``ui_app``:
``adapterhub ui``, the registry's pages with no base model loaded).

The registry pages import no torch or transformers: ``adapterhub ui`` starts in about a second. The serving
views and the playground are added only when a serving ``state`` is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse

from adapterhub.web import adapter_pages, auth_pages, bench_pages
from adapterhub.web.context import UI
from adapterhub.web.render import STATIC, PageError, PageRoute, SignInFirst
from adapterhub.web.sessions import Sessions
from adapterhub_registry import Registry

OPEN_PATHS = ("/ui/login",)  # what a server with an API key shows before sign-in (besides /ui/static)
STATIC_FILES = {  # name -> media type: the only files /ui/static serves
    "htmx.min.js": "text/javascript",
    "htmx.LICENSE": "text/plain",
    "playground.js": "text/javascript",
    "ui.css": "text/css",
}


def ui_router(registry: Registry, *, api_key: str | None, state: Any | None = None,
              sessions: Sessions | None = None, bench_results: Path | None = None) -> APIRouter:  # fmt: skip
    """The pages under ``/ui``; ``state`` (the server's ``AppState``) adds the serving views and the playground,
    ``sessions`` shares the sign-ins with the server (whose API then takes the playground's tokens)."""
    ui = UI(registry, sessions or Sessions(api_key), state, bench_results or default_bench_results())

    def remember(request: Request) -> None:  # before every handler, so that error pages know the session too
        common = ui.common(request)
        # With an API key the pages are the API's data: reading them needs a session too (a change is refused by its
        # own handler with a 403, so only reads are sent to sign in first).
        path = request.url.path
        if (
            ui.sessions.configured
            and common["session"] is None
            and request.method == "GET"
            and not (path in OPEN_PATHS or path.startswith("/ui/static/"))
        ):
            raise SignInFirst(path + (f"?{request.url.query}" if request.url.query else ""))

    router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False, dependencies=[Depends(remember)])

    @router.get("/")
    def index() -> RedirectResponse:
        return RedirectResponse("/ui/adapters", status_code=303)

    @router.get("/static/{name}")
    def static(name: str) -> FileResponse:
        if name not in STATIC_FILES:
            raise PageError(404, f"no static file {name!r}")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name], headers={"Cache-Control": "max-age=3600"})

    auth_pages.add_routes(router, ui)
    adapter_pages.add_routes(router, ui)
    bench_pages.add_routes(router, ui)
    if state is not None:
        from adapterhub.web import serving_pages

        serving_pages.add_routes(router, ui)

    @router.api_route("/{path:path}", methods=["GET", "POST"])
    def unknown(path: str) -> None:  # last: a page under /ui that does not exist is a page too, not JSON
        raise PageError(404, f"there is no page /ui/{path}; start from /ui/adapters")

    return router


def ui_app(registry: Registry, *, api_key: str | None, bench_results: Path | None = None) -> FastAPI:
    """``adapterhub ui``: the registry's pages alone (``/`` goes to them)."""
    app = FastAPI(title="adapterhub ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(ui_router(registry, api_key=api_key, bench_results=bench_results))

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/adapters", status_code=303)

    return app


def default_bench_results() -> Path | None:
    """``benchmarks/results`` of the installed benchmark harness, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("benchmarks")
    if spec is None or not spec.submodule_search_locations:
        return None
    results = Path(next(iter(spec.submodule_search_locations))) / "results"
    return results if results.is_dir() else None
