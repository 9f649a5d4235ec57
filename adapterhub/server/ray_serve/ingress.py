"""The ingress: the one HTTP entry point of ``adapterhub serve --replicas N`` (behind Ray Serve's HTTP proxy).

For ``/v1/completions`` and ``/v1/chat/completions`` it resolves ``model`` once, as one server does
(``openai_routes.resolve_model``: the base's name, or a registry ref -> ``name@version``: in the shared registry,
or with ``--remote`` on the remote alone, as the remote numbers it, with no local registry at all), and forwards
the request with ``multiplexed_model_id=name@version``, so Ray Serve routes it to a replica that already holds
that adapter; the replica serves it under the same key (with ``--remote``, under the local key its own registry
fetched it as), so a tag moved meanwhile is picked up by the next request, never in the middle of one. Every
other route is forwarded to any replica, except ``/metrics`` (every replica's, merged from the ``ReplicaBoard``
with a ``replica`` label) and the routes that load adapters into one server's memory, which a fleet cannot
honour per replica.

A replica that dies mid-request (its process killed): a request none of whose answer reached the client yet is
sent again (Ray routes it to a live replica), up to ``attempts`` tries; a stream already under way ends with an
error event that says to retry. A replica that sends nothing for ``reply_timeout_s`` (a whole answer, when not
streamed) is answered with a 504 (or an error event), never a hang.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError

from adapterhub.server.http_errors import HTTPError, error_response
from adapterhub.server.middleware import BodyLimit, RequireKey
from adapterhub.server.openai_answers import sse
from adapterhub.server.openai_routes import resolve_model
from adapterhub.server.ray_serve.asgi_call import Forwarded, Start
from adapterhub.server.ray_serve.board import board, merged_exposition
from adapterhub.server.ray_serve.spec import ReplicaSpec
from adapterhub.server.remote_refs import RemoteKeys, remote_http_error
from adapterhub.server.settings import ServerSettings
from adapterhub_registry import Registry

log = logging.getLogger("adapterhub.server")
ROUTED_BY_MODEL = ("/v1/completions", "/v1/chat/completions")
PER_SERVER_LOADS = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/adapters/load", "/adapters/unload")
REPLICA_GONE = (RayActorError, ActorUnavailableError)
RETRY_PAUSE_S = 0.5


class ReplicaFailed(Exception):
    """The replica serving a request died or went silent; the message says to retry."""


@dataclass
class Edge:
    """What ``resolve_model`` reads of a server's state, at the ingress: the base's name, no per-server
    ``lora_name``s (``PER_SERVER_LOADS`` are refused here), and where refs resolve: the shared ``registry``, or
    the ``remote`` alone (``--remote``: the remote's own ``name@version``; a ref it does not know is a 404 naming
    it, a remote that cannot be reached a 503)."""

    settings: ServerSettings
    registry: Registry | None = None
    remote: RemoteKeys | None = None
    lora_names: dict[str, str] = field(default_factory=dict)

    async def record_of(self, ref: str):
        if self.remote is None:
            assert self.registry is not None  # one of the two, by construction (Ingress.__init__)
            return self.registry.resolve(ref)
        try:
            return await asyncio.to_thread(self.remote.resolve, ref)
        except Exception as exc:  # noqa: BLE001 - the remote's errors become answers that name it
            raise remote_http_error(exc, ref, self.remote.config) from None


@serve.ingress()
class Ingress:
    """The Ray Serve deployment class of the ingress; ``replicas`` is the handle of the replicas' deployment."""

    def __init__(self, replicas, spec: ReplicaSpec) -> None:
        self.replicas, self.spec = replicas, spec
        if spec.remote_config is not None:  # no local registry: this node's ADAPTERHUB_HOME may be empty
            self.edge = Edge(spec.settings, remote=RemoteKeys(spec.remote_config))
        else:
            self.edge = Edge(spec.settings, registry=Registry(spec.registry_root))
        self.board = board()

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI(title="adapterhub (Ray Serve ingress)")
        app.add_api_route("/metrics", self.metrics, methods=["GET"])
        for path in ROUTED_BY_MODEL:
            app.add_api_route(path, self.by_model, methods=["POST"])
        for path in PER_SERVER_LOADS:
            app.add_api_route(path, self.refuse_load, methods=["POST"])
        app.add_api_route("/{path:path}", self.any_replica, methods=["GET", "POST", "PUT", "DELETE"])
        app.add_middleware(BodyLimit, limit=self.spec.settings.max_body_bytes)
        app.add_middleware(RequireKey, api_key=self.spec.settings.api_key)
        return app

    async def metrics(self) -> Response:
        reports = await self.board.live.remote()
        return Response(merged_exposition({r.replica: r.exposition for r in reports}), media_type=CONTENT_TYPE_LATEST)

    async def refuse_load(self, request: Request) -> Response:
        return error_response(request.url.path, HTTPError(
            501, "with --replicas each replica loads adapters on demand: send the adapter's registry ref (name, "
                 "name@version or name:tag) as `model`; import a PEFT directory with `adapterhub registry import-peft` first"))  # fmt: skip

    async def by_model(self, request: Request) -> Response:
        body = await request.body()
        try:
            model = json.loads(body).get("model")
        except (ValueError, AttributeError):
            model = None  # not a JSON object: the replica's app answers it as it would answer one server's client
        key = None
        if isinstance(model, str):
            try:
                key, _ = await resolve_model(self.edge, model)
            except HTTPError as exc:
                return error_response(request.url.path, exc)
        return await self.forward(request, body, key)

    async def any_replica(self, request: Request) -> Response:
        return await self.forward(request, await request.body(), None)

    async def forward(self, request: Request, body: bytes, key: str | None) -> Response:
        forwarded = Forwarded(request.method, request.url.path, request.url.query.encode(),
                              tuple(request.headers.raw), body, key)  # fmt: skip
        routed = {"multiplexed_model_id": key} if key and self.spec.multiplexed else {}
        handle = self.replicas.options(stream=True, **routed)
        for attempt in range(1, self.spec.attempts + 1):
            answer = handle.forward.remote(forwarded)
            try:
                start = await self._next(answer)
                if (start.header(b"content-type") or b"").startswith(b"text/event-stream"):
                    return StreamingResponse(self._rest(answer), start.status, _headers(start))
                pieces = [piece async for piece in _pieces(answer, self.spec.reply_timeout_s)]
                return Response(b"".join(pieces), start.status, _headers(start))
            except ReplicaFailed as exc:
                answer.cancel()
                log.warning("request to %s, try %d of %d: %s", request.url.path, attempt, self.spec.attempts, exc)
                silent = isinstance(exc.__cause__, asyncio.TimeoutError)  # it may still be working: do not pile on
                if silent or attempt == self.spec.attempts:
                    return error_response(
                        request.url.path, HTTPError(504 if silent else 503, str(exc), code="replica_failed")
                    )
                await asyncio.sleep(RETRY_PAUSE_S)
        raise AssertionError("unreachable: the last attempt returns")

    async def _next(self, answer) -> Start:
        async for piece in _pieces(answer, self.spec.reply_timeout_s):
            return piece
        raise ReplicaFailed("the replica ended the request without an answer; retry the request")

    async def _rest(self, answer) -> AsyncIterator[bytes]:
        """The rest of a stream; a replica lost now ends it with an error event (its client has seen tokens)."""
        try:
            async for piece in _pieces(answer, self.spec.reply_timeout_s):
                yield piece
        except ReplicaFailed as exc:
            yield sse(
                {"error": {"message": str(exc), "type": "server_error", "param": None, "code": "replica_failed"}}
            ).encode()
        finally:
            answer.cancel()  # a client gone mid-stream: the replica's app sees the disconnect and frees the row


async def _pieces(answer, timeout_s: float) -> AsyncIterator:
    """The replica's answer piece by piece; a dead or silent replica becomes ``ReplicaFailed``."""
    pieces = answer.__aiter__()
    while True:
        try:
            piece = await asyncio.wait_for(pieces.__anext__(), timeout_s)
        except StopAsyncIteration:
            return
        except REPLICA_GONE as exc:
            raise ReplicaFailed(
                f"the replica serving this request stopped ({type(exc).__name__}); retry the request"
            ) from exc
        except asyncio.TimeoutError as exc:
            raise ReplicaFailed(f"the replica sent nothing for {timeout_s:g} s; retry the request") from exc
        yield piece


def _headers(start: Start) -> dict[str, str]:
    """The replica's headers for the client's answer (the length is recomputed by the ingress's own answer)."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in start.headers if k.lower() != b"content-length"}
