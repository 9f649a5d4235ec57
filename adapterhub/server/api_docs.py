"""``/docs``, the API's Swagger UI page, with its script, style and icon served by the server itself.

FastAPI's default page loads Swagger UI from a CDN, so on a machine without internet it stays blank. This
serves the files of npm's ``swagger-ui-dist`` vendored in ``static/swagger-ui/`` (their license beside them)
under ``/docs/assets``, the way FastAPI documents self-hosting them ("Custom Docs UI Static Assets").
``create_app`` builds its app with ``docs_url=None, redoc_url=None`` and calls ``add_api_docs``; ReDoc stays off,
its bundle would be a CDN download as well.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(__file__).parent / "static" / "swagger-ui"
ASSETS_URL = "/docs/assets"


def add_api_docs(app: FastAPI) -> None:
    """``GET /docs`` on ``app``, loading nothing from outside the server."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
        )
