"""HTTP serving of one base model with many adapters: ``create_app`` (app.py), run by ``adapterhub serve``."""

from adapterhub.server.app import ServerSettings, create_app
from adapterhub.server.metrics import AlertThresholds

__all__ = ["AlertThresholds", "ServerSettings", "create_app"]
