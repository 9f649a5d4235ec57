"""``adapterhub serve --remote NAME``: refs are resolved on a shared remote registry and fetched on a miss.

A fleet of servers shares one remote (S3, or a shared directory); an adapter pushed there from a training
machine is servable by every server at once. For a request's ``model``, the server asks the remote which version
the ref names (one small read of an index entry or a tag), takes the local copy of that version when an earlier
fetch brought it (recorded in its manifest), or fetches it (sha256 re-checked) into the local registry, and
serves the local ``name@version``. A resolution is reused for ``ttl`` seconds, so a burst of requests for one
ref reads the remote once; a tag moved on the remote is picked up within ``ttl``.

A ref the remote does not know is looked up in the local registry (an adapter pushed only here is still
served); when the remote cannot be reached, the local registry answers and the failure is logged, so a remote
outage degrades to serving what is already here instead of failing every request.
"""

from __future__ import annotations

import logging
import threading
import time

from adapterhub_registry import AdapterRecord, NotFoundError, Registry, RegistryError
from adapterhub_registry.remote import Remote

log = logging.getLogger("adapterhub.server")


class RemoteRefs:
    def __init__(self, registry: Registry, remote: Remote, ttl: float = 5.0) -> None:
        self.registry, self.remote, self.ttl = registry, remote, ttl
        self._resolved: dict[str, tuple[float, AdapterRecord]] = {}
        self._lock = threading.Lock()

    def resolve(self, ref: str) -> AdapterRecord:
        """The local record serving ``ref`` (blocking: network and disk; call it off the event loop)."""
        with self._lock:
            cached = self._resolved.get(ref)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        try:
            record = self.remote.fetch(ref)
        except NotFoundError:
            return self.registry.resolve(ref)  # not on the remote: maybe pushed only here (NotFoundError if not)
        except RegistryError:
            raise  # a damaged entry or blob on the remote: the operator must know, not a silent fallback
        except Exception as exc:  # the remote is unreachable (socket, HTTP, credentials): serve what is here
            log.warning(
                "remote %s could not resolve %r (%s); resolving it in the local registry", self.remote.name, ref, exc
            )
            return self.registry.resolve(ref)
        with self._lock:
            self._resolved[ref] = (time.monotonic(), record)
        return record
