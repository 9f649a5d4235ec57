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

With replicas (``serve --replicas N --remote NAME``, server/ray_serve/) the two halves live apart and no local
registry is shared: the ingress resolves a ref to the remote's own ``name@version`` with ``RemoteKeys`` (the
remote alone: its node may have an empty ``ADAPTERHUB_HOME``), and each replica maps that key to the local one of
its own node's registry with ``FetchedKeys``, fetching it on the first request. Neither falls back to a local
registry: a local ``name@3`` is whatever that registry numbered 3, not the remote's ``name@3``.
"""

from __future__ import annotations

import logging
import threading
import time

from adapterhub import plugins
from adapterhub.server.http_errors import HTTPError, http_error
from adapterhub_registry import AdapterRecord, InvalidNameError, NotFoundError, Registry, RegistryError
from adapterhub_registry import remote_layout as layout
from adapterhub_registry.names import parse_ref
from adapterhub_registry.remote import Remote
from adapterhub_registry.remote_config import RemoteConfig
from adapterhub_registry.remote_store import RemoteStoreError, open_store

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
        except Exception as exc:  # noqa: BLE001 - sorted just below
            # unreachable (socket, HTTP, credentials: RemoteStoreError, or a plugin store's own client error):
            # serve what is here; a damaged or refused entry or blob: the operator must know, no silent fallback
            if isinstance(exc, RegistryError) and not isinstance(exc, RemoteStoreError):
                raise remote_http_error(exc, ref, self.remote.config) from None  # named in the answer, not a bare 500
            log.warning(
                "remote %s could not resolve %r (%s); resolving it in the local registry", self.remote.name, ref, exc
            )
            return self.registry.resolve(ref)
        with self._lock:
            self._resolved[ref] = (time.monotonic(), record)
        return record


class RemoteKeys:
    """The ingress's half with replicas: a ref (``name``, ``name@3``, ``name:prod``) -> the remote's record of the
    version it names (its own version number), read from the remote alone: one small read of an entry or a tag,
    reused for ``ttl`` seconds, so a burst for one ref reads the remote once and a moved tag is seen within ``ttl``.
    Needs no local registry: nothing is fetched or written here."""

    def __init__(self, config: RemoteConfig, ttl: float = 5.0) -> None:
        self.config, self.ttl = config, ttl
        self.store = open_store(config.url, config.endpoint_url, plugins.catalog().remote_store_specs())
        self._resolved: dict[str, tuple[float, AdapterRecord]] = {}
        self._lock = threading.Lock()

    def resolve(self, ref: str) -> AdapterRecord:
        """The remote's record of ``ref`` (blocking: network; call it off the event loop). Raises what
        ``remote_http_error`` turns into the caller's answer."""
        with self._lock:
            cached = self._resolved.get(ref)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        record = layout.resolve(self.store, parse_ref(ref)).record()
        with self._lock:
            self._resolved[ref] = (time.monotonic(), record)
        return record


class FetchedKeys:
    """The replica's half with replicas: the remote's ``name@version`` (what the ingress routes by) -> the local
    ``name@version`` this node's own registry holds that version under, fetched (sha256-checked) on first use.

    ``Remote.fetch`` of a version fetched before returns the existing local record, so a restarted replica finds
    what its node already holds with one read of the entry; a key once mapped is kept for the process's life, as
    a remote version is never rewritten."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self._local: dict[str, str] = {}

    @classmethod
    def open(cls, registry: Registry, config: RemoteConfig) -> FetchedKeys:
        """``config``'s remote (as the launcher configured it: its URL, endpoint and everything else it records),
        fetching into ``registry``; the node's own registry needs no ``remote add`` of its own."""
        store = open_store(config.url, config.endpoint_url, plugins.catalog().remote_store_specs())
        return cls(Remote(registry, config, store))

    def local_key(self, ref: str) -> str:
        """The local ``name@version`` serving the remote's ``ref`` (blocking: network and disk)."""
        found = self._local.get(ref)
        if found is None:
            found = self.remote.fetch(ref).ref
            if parse_ref(ref).version is not None:  # a tag or a bare name may name another version later
                self._local[ref] = found
        return found


def remote_http_error(exc: Exception, ref: str, config: RemoteConfig) -> HTTPError:
    """The answer for a ref that ``RemoteKeys`` or ``FetchedKeys`` could not serve, naming the remote: a 404 for
    a ref it does not know, a 503 when it cannot be reached, a 502 for an entry or blob it holds damaged (or
    refused: what is on the remote is wrong, not the request)."""
    where = f"remote {config.name} ({config.url})"
    if isinstance(exc, (NotFoundError, InvalidNameError)):
        return HTTPError(404, f"The model `{ref}` does not exist on {where}: {exc}. `adapterhub registry list "
                              f"--remote {config.name}` lists its adapters", param="model", code="model_not_found")  # fmt: skip
    if isinstance(exc, RemoteStoreError):
        log.warning("%s could not be reached for %r: %s", where, ref, exc)
        return HTTPError(503, f"{where} cannot be reached to resolve `{ref}`; retry later ({exc})",
                         code="remote_unavailable")  # fmt: skip
    if isinstance(exc, RegistryError):
        log.error("%s refused %r: %s", where, ref, exc)
        return HTTPError(502, f"{where} holds `{ref}` but it cannot be served: {exc}", code="remote_refused")
    return http_error(exc)  # not the remote's doing: logged, a 500
