"""The server's handlers one by one, each over an ``AppState`` built here from a tiny model: called directly as
async functions, or mounted alone on a bare FastAPI app. The whole app over HTTP is in test_server.py."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from test_runtime import push_random_adapter

from adapterhub.base import load_base
from adapterhub.runtime import AdapterPool, GenerationSettings, generate
from adapterhub.server import ServerSettings, create_app, handlers
from adapterhub.server.http_errors import HTTPError
from adapterhub.server.schemas import AdapterRequest, ClassifyRequest, GenerateRequest
from adapterhub.server.state import AppState


@pytest.fixture
def state(tiny_llama, tmp_path):
    """The state of a generation server over tiny_llama, with adapter `a` in the registry (not loaded yet)."""
    base = load_base(tiny_llama)
    push_random_adapter(base, "a", {"r": 2}, tmp_path, seed=1)
    state = AppState.build(AdapterPool(base, slots=2, max_rank=2), ServerSettings(max_new_tokens=8, max_wait_ms=0))
    yield state
    state.batcher.worker.shutdown(wait=True)


def refusal(answer: Coroutine) -> HTTPError:
    """The ``HTTPError`` a handler call raises instead of answering."""
    with pytest.raises(HTTPError) as refused:
        asyncio.run(answer)
    return refused.value


def test_health_handler_reports_the_base_and_its_slots(state):
    answer = asyncio.run(handlers.health(state))
    assert answer == {"status": "ok", "model_task": "causal-lm", "base": state.pool.base.fingerprint_id, "quantization": None,
                      "slots": 2, "alerts": []}  # fmt: skip


def test_adapters_handler_mounted_alone_lists_what_the_pool_holds(state):
    state.pool.load("a")
    app = FastAPI()
    app.add_api_route("/adapters", handlers.list_adapters)
    app.state.adapterhub = state
    with TestClient(app) as client:
        answer = client.get("/adapters").json()
    assert (answer["slots"], answer["max_rank"]) == (2, 2)
    assert [(a["adapter"], a["tier"]) for a in answer["adapters"]] == [("a@1", "device")]


def test_load_and_unload_handlers_change_the_pool(state):
    loaded = asyncio.run(handlers.load_adapter(AdapterRequest(ref="a"), state))
    assert loaded == {"adapter": "a@1", "kind": "slotted", "not_slottable_because": None}
    assert asyncio.run(handlers.unload_adapter(AdapterRequest(ref="a@1"), state)) == {"unloaded": "a@1"}
    assert state.pool.describe() == []


def test_load_handler_answers_an_unknown_adapter_with_404_naming_it(state):
    error = refusal(handlers.load_adapter(AdapterRequest(ref="nope"), state))
    assert error.status == 404 and "nope" in error.detail


def test_generate_handler_refuses_more_new_tokens_than_the_limit_before_queueing(state):
    error = refusal(handlers.generate(GenerateRequest(prompt="the movie", max_new_tokens=9), state))
    assert error.status == 413 and "limit of 8" in error.detail


def test_classify_handler_on_a_generation_base_points_to_generate(state):
    error = refusal(handlers.classify(ClassifyRequest(text="great"), state))
    assert error.status == 400 and "use POST /generate" in error.detail


def test_a_task_without_a_router_is_refused_saying_how_to_start_one(state):
    error = refusal(handlers.generate(GenerateRequest(prompt="the movie", task="auto"), state))
    assert error.status == 400 and "--router SEQUENCE" in error.detail


def test_generate_handler_answers_through_the_batcher_as_running_alone(state):
    async def served() -> dict:
        state.batcher.start()
        try:
            return await handlers.generate(
                GenerateRequest(prompt="the movie was", adapter="a", max_new_tokens=4), state
            )
        finally:
            await state.batcher.stop()

    answer = asyncio.run(served())
    alone = generate(state.pool, ["the movie was"], ["a"], GenerationSettings(max_new_tokens=4))[0]
    assert answer == {"text": alone.text, "tokens": alone.tokens, "adapter": "a"}


def test_requests_to_unknown_paths_are_counted_as_other(state):
    with TestClient(create_app(state.pool)) as client:
        assert client.get("/no-such-page").status_code == 404
        assert client.get("/health").status_code == 200
        metrics = client.get("/metrics").text
    assert 'adapterhub_requests_total{endpoint="other",status="404"} 1.0' in metrics
    assert 'adapterhub_requests_total{endpoint="/health",status="200"} 1.0' in metrics
