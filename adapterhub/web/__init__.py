"""The web pages: the registry's adapters (``adapterhub ui``), and under ``adapterhub serve`` at ``/ui`` the live
serving views and a playground. Server-rendered Jinja2 (autoescaped) with vendored htmx; see docs/ui.md."""

from adapterhub.web.app import ui_app, ui_router
from adapterhub.web.sessions import Sessions

__all__ = ["Sessions", "ui_app", "ui_router"]
