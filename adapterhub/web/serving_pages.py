"""The pages only ``adapterhub serve`` has: the live serving view and the playground.

``/ui/serving`` shows which adapters sit in device slots and in the host cache (``AdapterPool.describe``), the
per-adapter requests, tokens, time to first token and inter-token latency, the queue depth and running rows:
the very figures ``/metrics`` exports (``AdapterMetrics`` of the server's state). htmx swaps in
``/ui/serving/live`` every second; without JavaScript the page shows the figures as of its loading. Signed in,
adapters can be loaded and unloaded (POSTs with the session's CSRF token, run on the model thread as the API's
``/adapters/load`` is).

``/ui/playground`` sends a prompt to one adapter, or two side by side, through the server's own OpenAI routes
(``static/playground.js``, ``fetch`` with a streamed body). The page does not proxy: the browser talks to
``/v1/completions`` or ``/v1/chat/completions`` exactly as any client does, so what streams is what the API
streams. With an ``--api-key``, a signed-in page gets a bearer token of its own that expires in 15 minutes
(``Sessions.playground_token``): the key itself never reaches the page.

The state is the server's ``AppState``, taken as it is (this layer sits below the server's and imports none of it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from adapterhub.errors import AdapterHubError
from adapterhub.web.context import UI
from adapterhub.web.render import PageError, form_fields, query_fields, render
from adapterhub_registry import InvalidNameError, NotFoundError, RegistryError

PLAYGROUND_ADAPTERS = 200  # adapters offered in the playground's lists (the registry's, for this base, by name)


def add_routes(router: APIRouter, ui: UI) -> None:
    state = ui.state

    @router.get("/serving")
    async def serving(request: Request):
        query_fields(request, ())
        return render("serving.html", live=live_figures(state), **ui.common(request))

    @router.get("/serving/live")
    async def serving_live(request: Request):
        query_fields(request, ())
        return render("serving_live.html", live=live_figures(state), **ui.common(request))

    async def change_pool(request: Request, change) -> RedirectResponse:
        """A POST of the serving page: the session and its CSRF token first, then ``change(ref)`` on the model thread."""
        form = await form_fields(request)
        ui.sessions.require(request, form.get("csrf"))
        await _on_model_thread(state, lambda: change(_ref(form)))
        return RedirectResponse("/ui/serving", status_code=303)

    @router.post("/serving/load")
    async def load(request: Request):
        return await change_pool(request, state.pool.load)

    @router.post("/serving/unload")
    async def unload(request: Request):
        return await change_pool(request, state.pool.unload)

    @router.get("/playground")
    def playground(request: Request):
        query_fields(request, ())
        common = ui.common(request)
        allowed = not ui.sessions.configured or common["session"] is not None
        token = ui.sessions.playground_token() if ui.sessions.configured and allowed else ""
        records, _ = ui.registry.page(base=state.pool.base.fingerprint_id, sort="name", limit=PLAYGROUND_ADAPTERS)
        models = [state.settings.model_name, *state.lora_names, *(r.name for r in records)]
        return render("playground.html", models=list(dict.fromkeys(models)), base=state.settings.model_name,
                      token=token, allowed=allowed, causal=state.model_task == "causal-lm", **common)  # fmt: skip


def live_figures(state: Any) -> dict[str, Any]:
    """What the serving view shows, read as ``/metrics`` reads it (on the event loop, between model steps)."""
    adapters = state.pool.describe()
    rows = []
    for name, counts in state.adapter_metrics.folded().items():
        ttft_n, itl_n = sum(counts.ttft.counts), sum(counts.itl.counts)
        rows.append({"adapter": name, "requests": counts.requests, "tokens": counts.tokens, "cancelled": counts.cancelled,
                     "ttft_ms": 1000 * counts.ttft.total / ttft_n if ttft_n else None,
                     "itl_ms": 1000 * counts.itl.total / itl_n if itl_n else None})  # fmt: skip
    return {
        "slots": sorted((a for a in adapters if a["tier"] == "device"), key=lambda a: a["slot"]),
        "host": [a for a in adapters if a["tier"] != "device"],
        "slot_count": state.pool.slots,
        "host_capacity": state.pool.host_capacity,
        "queue_depth": state.adapter_metrics.queue_depth(),
        "running": state.adapter_metrics.running_rows(),
        "per_adapter": rows,
    }


def _ref(form: dict[str, str]) -> str:
    ref = form.get("ref", "").strip()
    if not ref:
        raise PageError(400, "name the adapter: name, name@version or name:tag")
    return ref


async def _on_model_thread(state: Any, work) -> Any:
    """Pool work on the server's one model thread, between batches, as the API's load and unload run."""
    try:
        return await asyncio.get_running_loop().run_in_executor(state.batcher.worker, work)
    except NotFoundError as exc:
        raise PageError(404, str(exc)) from None
    except (InvalidNameError, RegistryError, AdapterHubError) as exc:
        raise PageError(409, str(exc)) from None
