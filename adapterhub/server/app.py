"""The HTTP app: one base model, many adapters, each request naming its own (``adapterhub serve`` runs it).

Endpoints: ``POST /generate`` (causal LM) or ``POST /classify`` (sequence classifier), ``GET /adapters``,
``POST /adapters/load``, ``POST /adapters/unload``, ``GET /health``, ``GET /metrics`` (Prometheus).
Requests that arrive together are batched across adapters by ``Batcher``; everything that touches the pool
runs on the batcher's one worker thread. Bad input gets a 4xx whose ``detail`` says what to fix; a damaged
registry entry, a fault of the server's storage, a 500 naming the entry; an unexpected failure a 500. Any of
these fails only its own request, never the others batched with it. With a continual-learning router
(``--router``), a request may name a ``task`` of the sequence instead of an adapter, or ``"task": "auto"`` to
have the router pick one from the input; the inputs of one batch are routed together, before the batch runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

from adapterhub_registry import CorruptBlobError, InvalidNameError, NotFoundError, RegistryError
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from adapterhub.continual.plan import AUTO
from adapterhub.continual.router import Router, UnknownTaskError
from adapterhub.errors import AdapterHubError, IncompatibleBaseError
from adapterhub.runtime import AdapterPool, GenerationSettings, classify, generate
from adapterhub.server.batcher import Batcher
from adapterhub.server.metrics import AlertThresholds, ServerMetrics

log = logging.getLogger("adapterhub.server")
TASK_FIELD = Field(default=None, description="A task of the server's --router sequence (its adapter is used), or 'auto': the router picks.")


class BodyLimit:
    """ASGI middleware counting body bytes as they arrive, so a body sent without Content-Length (chunked)
    cannot get past the size limit either; the 413 is raised inside the endpoint's body read."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        await self.app(scope, counted_receive, send)


@dataclass(frozen=True)
class ServerSettings:
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    max_input_tokens: int = 512
    max_new_tokens: int = 256
    max_body_bytes: int = 1 << 20
    alerts: AlertThresholds = AlertThresholds()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateRequest(_Strict):
    prompt: str = Field(min_length=1)
    adapter: str | None = Field(default=None, description="Registry ref (name, name@version, name:tag); none: the base.")
    task: str | None = TASK_FIELD
    max_new_tokens: int | None = Field(default=None, ge=1, description="Default: 32, or the server's limit if lower.")
    do_sample: bool = False
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = None


class ClassifyRequest(_Strict):
    text: str = Field(min_length=1)
    adapter: str | None = None
    task: str | None = TASK_FIELD


class AdapterRequest(_Strict):
    ref: str = Field(min_length=1)
    force: bool = Field(default=False, description="Load even if it was trained on another base.")


class HTTPError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def http_error(exc: Exception) -> HTTPError:
    """The status and message a caller gets for an error raised while serving its request."""
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, UnknownTaskError):
        return HTTPError(404, str(exc))
    if isinstance(exc, NotFoundError):
        return HTTPError(404, f"unknown adapter: {exc}. List loaded adapters with GET /adapters.")
    if isinstance(exc, InvalidNameError):
        return HTTPError(400, str(exc))
    if isinstance(exc, IncompatibleBaseError):
        return HTTPError(409, str(exc))
    if isinstance(exc, CorruptBlobError):  # the server's own storage is damaged: not the caller's fault
        log.error("damaged registry entry: %s", exc)
        return HTTPError(500, f"{exc}. This is a fault of the server's registry: its operator should run "
                              f"`adapterhub registry verify` there")  # fmt: skip
    if isinstance(exc, (AdapterHubError, RegistryError)):
        return HTTPError(400, str(exc))
    log.exception("request failed unexpectedly", exc_info=exc)
    return HTTPError(500, f"internal error ({type(exc).__name__}); the server logged the details")


def _isolating(run: Callable[[AdapterPool, list, list], list], pool: AdapterPool) -> Callable[[Hashable, Sequence], list]:
    """Run a batch so that one request's failure fails only that request: each distinct adapter is fetched on its
    own first (registry read and integrity check, base and head checks), and a batch that still fails runs
    again request by request."""

    def run_batch(key: Hashable, payloads: Sequence[Any]) -> list:
        results: list[Any] = [None] * len(payloads)
        failed: dict[str, Exception] = {}
        for adapter in {p.adapter for p in payloads if p.adapter is not None}:
            try:
                pool.kind(adapter)  # fetch it now: registry, sha256 and base fingerprint checks
            except Exception as exc:
                failed[adapter] = exc
        ok = [i for i, p in enumerate(payloads) if p.adapter not in failed]
        for i, p in enumerate(payloads):
            if p.adapter in failed:
                results[i] = failed[p.adapter]
        for i, result in zip(ok, _each_alone_if_failed(run, pool, [payloads[i] for i in ok], key)):
            results[i] = result
        return results

    return run_batch


def _each_alone_if_failed(run: Callable[[AdapterPool, list, list], list], pool: AdapterPool, payloads: list,
                          key: Hashable) -> list:  # fmt: skip
    """The batch's results; when the batch raises, each request's own result or error, from running it alone."""
    if not payloads:
        return []
    try:
        return run(pool, payloads, key)
    except Exception as exc:
        if len(payloads) == 1:
            return [exc]
        log.warning("a batch of %d requests failed (%s: %s); running them one by one", len(payloads), type(exc).__name__, exc)
    results: list[Any] = []
    for payload in payloads:
        try:
            results += run(pool, [payload], key)
        except Exception as exc:
            results.append(exc)
    return results


def _routing(run_batch: Callable[[Hashable, Sequence], list], router: Router,
             text_of: Callable[[Any], str]) -> Callable[[Hashable, Sequence], list]:  # fmt: skip
    """Route the batch's ``"task": "auto"`` requests in one forward of the bare base, then run the batch; every
    answer to a request that named a task says which task and adapter served it."""

    def run_batch_routed(key: Hashable, payloads: Sequence[Any]) -> list:
        auto = [i for i, p in enumerate(payloads) if p.task == AUTO]
        failed: Exception | None = None
        if auto:
            try:
                for i, route in zip(auto, router.routes([text_of(payloads[i]) for i in auto])):
                    payloads[i].adapter = route.task.ref
            except Exception as exc:  # routing failed: those requests get the error, the others still run
                failed = exc
        ready = [i for i, p in enumerate(payloads) if failed is None or p.task != AUTO]
        results: list[Any] = [failed] * len(payloads)
        for i, result in zip(ready, run_batch(key, [payloads[i] for i in ready]) if ready else []):
            task = payloads[i].task
            if task is not None and isinstance(result, dict):
                result = {**result, "task": router.task_of(payloads[i].adapter).name, "routed": task == AUTO}
            results[i] = result
        return results

    return run_batch_routed


def _run_generate(pool: AdapterPool, payloads: list[GenerateRequest], settings: GenerationSettings) -> list[dict]:
    outputs = generate(pool, [p.prompt for p in payloads], [p.adapter for p in payloads], settings)
    return [{"text": o.text, "tokens": o.tokens, "adapter": o.adapter} for o in outputs]


def _run_classify(pool: AdapterPool, payloads: list[ClassifyRequest], key: Hashable) -> list[dict]:
    outputs = classify(pool, [p.text for p in payloads], [p.adapter for p in payloads])
    return [{"label": o.label, "scores": o.scores, "adapter": o.adapter} for o in outputs]


def create_app(pool: AdapterPool, settings: ServerSettings = ServerSettings(), router: Router | None = None) -> FastAPI:
    """The FastAPI app serving ``pool``'s base for its task; ``router`` (bound to ``pool``) adds task routing."""
    task = pool.base.task
    metrics = ServerMetrics(pool, settings.alerts)
    run = _run_generate if task == "causal-lm" else _run_classify
    run_batch = _isolating(run, pool)
    if router is not None:
        run_batch = _routing(run_batch, router, (lambda p: p.prompt) if task == "causal-lm" else (lambda p: p.text))
    batcher = Batcher(run_batch, max_batch_size=settings.max_batch_size, max_wait_ms=settings.max_wait_ms,
                      on_batch=lambda size, seconds: metrics.batch_size.observe(size))  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="adapterhub", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.state.pool, app.state.metrics, app.state.batcher = pool, metrics, batcher
    routes = {"/generate", "/classify", "/adapters", "/adapters/load", "/adapters/unload", "/health", "/metrics"}

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_body_bytes:
            response = JSONResponse({"detail": f"request body over {settings.max_body_bytes} bytes"}, status_code=413)
        else:
            response = await call_next(request)
        path = request.url.path if request.url.path in routes else "other"
        metrics.observe(path, response.status_code, time.perf_counter() - started)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": f"invalid request: {problems}"}, status_code=422)

    @app.exception_handler(HTTPError)
    async def failed(request: Request, exc: HTTPError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    async def on_worker(fn: Callable[[], Any]) -> Any:
        """Run pool work on the model thread, between batches."""
        try:
            return await asyncio.get_running_loop().run_in_executor(batcher.worker, fn)
        except Exception as exc:
            raise http_error(exc) from None

    async def submitted(key: Hashable, payload: Any) -> Any:
        try:
            return await batcher.submit(key, payload)
        except Exception as exc:
            raise http_error(exc) from None

    def check_input(text: str) -> None:
        tokens = len(pool.base.tokenizer(text)["input_ids"])
        if tokens > settings.max_input_tokens:
            raise HTTPError(413, f"input is {tokens} tokens; this server takes at most {settings.max_input_tokens}")

    async def check_adapter(ref: str | None) -> None:
        if ref is not None:
            await on_worker(lambda: pool.key_of(ref))  # unknown or malformed refs fail here, before batching

    def choose_task(request: GenerateRequest | ClassifyRequest) -> None:
        """A named task becomes its adapter now; ``auto`` is routed with the rest of its batch."""
        if request.task is None:
            return
        if router is None:
            raise HTTPError(400, "this server has no task router (start it with --router SEQUENCE); name an adapter instead")
        if request.adapter is not None:
            raise HTTPError(400, f"the request names both adapter {request.adapter!r} and task {request.task!r}; give one")
        if request.task != AUTO:
            try:
                request.adapter = router.ref_for(request.task)
            except UnknownTaskError as exc:
                raise http_error(exc) from None

    @app.post("/generate")
    async def generate_endpoint(request: GenerateRequest) -> dict:
        if task != "causal-lm":
            raise HTTPError(400, f"this server runs a {task} base; use POST /classify")
        request.max_new_tokens = request.max_new_tokens or min(32, settings.max_new_tokens)
        if request.max_new_tokens > settings.max_new_tokens:
            raise HTTPError(413, f"max_new_tokens {request.max_new_tokens} is over this server's limit of {settings.max_new_tokens}")
        check_input(request.prompt)
        choose_task(request)
        await check_adapter(request.adapter)
        key = GenerationSettings(request.max_new_tokens, request.do_sample, request.temperature, request.top_p,
                                 request.top_k, request.seed)  # fmt: skip
        result = await submitted(key, request)
        metrics.tokens.inc(result["tokens"])
        return result

    @app.post("/classify")
    async def classify_endpoint(request: ClassifyRequest) -> dict:
        if task != "seq-cls":
            raise HTTPError(400, f"this server runs a {task} base; use POST /generate")
        check_input(request.text)
        choose_task(request)
        await check_adapter(request.adapter)
        return await submitted("classify", request)

    @app.get("/adapters")
    async def list_adapters() -> dict:
        return {"slots": pool.slots, "max_rank": pool.max_rank, "adapters": await on_worker(pool.describe)}

    @app.post("/adapters/load")
    async def load_adapter(request: AdapterRequest) -> dict:
        def load() -> dict:
            key = pool.load(request.ref, force=request.force)
            return {"adapter": key, "kind": pool.kind(key), "not_slottable_because": pool.reason(key)}

        return await on_worker(load)

    @app.post("/adapters/unload")
    async def unload_adapter(request: AdapterRequest) -> dict:
        return {"unloaded": await on_worker(lambda: pool.unload(request.ref))}

    @app.get("/health")
    async def health() -> dict:
        health = {"status": "ok", "task": task, "base": pool.base.fingerprint_id, "quantization": pool.base.quantization,
                  "slots": pool.slots, "alerts": metrics.active_alerts()}  # fmt: skip
        if router is not None:
            health["router"] = {"sequence": router.sequence, "tasks": {t.name: t.ref for t in router.tasks}}
        return health

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
