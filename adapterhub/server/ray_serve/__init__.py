"""``adapterhub serve --replicas N``: the one server's routes as a Ray Serve application (``pip install
'adapterhub[ray]'``).

N replicas (``replica.py``), each one process with its own base, adapter pool and continuous-batching engine,
serving the app ``create_app`` builds; one ingress (``ingress.py``) that resolves each request's adapter to its
``name@version`` and forwards it with Ray Serve's model multiplexing keyed by it, so the request goes to a replica
already holding the adapter; ``board.py`` gathers every replica's metrics for the ingress's ``/metrics``;
``launch.py`` deploys it all. Importing this package needs ``ray[serve]``.
"""

from __future__ import annotations

import importlib

_MODULE_OF = {
    "APP_NAME": "adapterhub.server.ray_serve.launch",
    "application": "adapterhub.server.ray_serve.launch",
    "serve_replicas": "adapterhub.server.ray_serve.launch",
    "ReplicaSpec": "adapterhub.server.ray_serve.spec",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    # Imported when first used: the board's actor process imports ``board.py`` alone and must not pay for torch.
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
