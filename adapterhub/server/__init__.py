"""HTTP serving of one base model with many adapters: ``build_server`` (build.py) loads what a ``ServeSpec``
(settings.py) names and assembles the app (``create_app``, app.py); ``adapterhub serve`` runs it."""

from __future__ import annotations

import importlib

_MODULE_OF = {
    "ServerSettings": "adapterhub.server.settings",
    "ServeSpec": "adapterhub.server.settings",
    "AlertThresholds": "adapterhub.server.settings",
    "create_app": "adapterhub.server.app",
    "build_server": "adapterhub.server.build",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    # Imported when first used: `adapterhub --help` imports this package for ``command`` and must not pay for
    # fastapi and torch (PEP 562).
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
