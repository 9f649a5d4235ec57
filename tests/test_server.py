"""The HTTP server on tiny models: per-request adapters batched together, adapter management, metrics,
and clear 4xx answers to bad input without the server going down."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from adapterhub.base import load_base
from adapterhub.runtime import AdapterPool, GenerationSettings, generate
from adapterhub.server import AlertThresholds, ServerSettings, create_app
from test_runtime import push_random_adapter
from tiny_models import make_tiny_llama


@pytest.fixture
def llama_server(tiny_llama, tmp_path):
    base = load_base(tiny_llama)
    push_random_adapter(base, "a", {"r": 4}, tmp_path, seed=1)
    push_random_adapter(base, "b", {"r": 2, "target_modules": "q_proj,v_proj"}, tmp_path, seed=2)
    pool = AdapterPool(base, slots=2, max_rank=4)
    settings = ServerSettings(max_batch_size=8, max_wait_ms=50, max_input_tokens=16, max_new_tokens=8,
                              alerts=AlertThresholds(p95_ms=0.0))  # fmt: skip
    with TestClient(create_app(pool, settings)) as client:
        yield client, pool


def test_concurrent_requests_for_different_adapters_share_a_batch_and_match_running_alone(llama_server):
    client, pool = llama_server
    requests = [("the movie was", "a"), ("i love this film", "b"), ("they drive", None), ("so fun", "a")]
    with ThreadPoolExecutor(4) as threads:
        answers = list(threads.map(lambda r: client.post("/generate", json={"prompt": r[0], "adapter": r[1],
                                                                           "max_new_tokens": 5}), requests))  # fmt: skip
    assert [a.status_code for a in answers] == [200] * 4
    for (prompt, adapter), answer in zip(requests, answers):
        alone = generate(pool, [prompt], [adapter], GenerationSettings(max_new_tokens=5))[0]
        assert answer.json() == {"text": alone.text, "tokens": alone.tokens, "adapter": adapter}
    metrics = client.get("/metrics").text
    assert 'adapterhub_requests_total{endpoint="/generate",status="200"} 4.0' in metrics
    batched = [line for line in metrics.splitlines() if line.startswith("adapterhub_batch_size_count")]
    assert float(batched[0].split()[-1]) < 4  # at least two requests ran in one batch


def test_adapters_are_listed_loaded_and_unloaded(llama_server):
    client, _ = llama_server
    loaded = client.post("/adapters/load", json={"ref": "a"})
    assert loaded.status_code == 200 and loaded.json() == {"adapter": "a@1", "kind": "slotted", "not_slottable_because": None}
    listed = client.get("/adapters").json()
    assert [(a["adapter"], a["tier"]) for a in listed["adapters"]] == [("a@1", "device")]
    assert client.post("/adapters/unload", json={"ref": "a@1"}).json() == {"unloaded": "a@1"}
    assert client.get("/adapters").json()["adapters"] == []
    assert client.post("/adapters/unload", json={"ref": "a"}).status_code == 400


def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(llama_server):
    client, _ = llama_server
    unknown = client.post("/generate", json={"prompt": "the movie", "adapter": "nope"})
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
    bad_name = client.post("/generate", json={"prompt": "the movie", "adapter": "../etc"})
    assert bad_name.status_code == 400
    malformed = client.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 422 and "JSON" in malformed.json()["detail"]
    typo = client.post("/generate", json={"promt": "the movie"})
    assert typo.status_code == 422 and "prompt" in typo.json()["detail"]
    too_long = client.post("/generate", json={"prompt": " ".join(["the"] * 40)})
    assert too_long.status_code == 413 and "at most 16" in too_long.json()["detail"]
    too_many = client.post("/generate", json={"prompt": "the", "max_new_tokens": 100})
    assert too_many.status_code == 413
    huge = client.post("/generate", content=b"x" * (2 << 20), headers={"content-type": "application/json"})
    assert huge.status_code == 413
    wrong_task = client.post("/classify", json={"text": "great"})
    assert wrong_task.status_code == 400 and "/generate" in wrong_task.json()["detail"]
    assert client.post("/generate", json={"prompt": "the movie", "adapter": "a"}).status_code == 200
    assert client.get("/health").json()["status"] == "ok"


def test_adapter_for_another_base_is_refused_with_409_naming_both(llama_server, tmp_path):
    client, pool = llama_server
    other = load_base(make_tiny_llama(tmp_path / "other", seed=3))
    record = push_random_adapter(other, "foreign", {"r": 2}, tmp_path)
    answer = client.post("/generate", json={"prompt": "the movie", "adapter": "foreign"})
    assert answer.status_code == 409
    assert record.base_fingerprint in answer.json()["detail"] and pool.base.fingerprint_id in answer.json()["detail"]


def test_metrics_expose_latency_swaps_pool_and_memory_and_alerts_are_logged(llama_server, caplog):
    client, _ = llama_server
    with caplog.at_level(logging.WARNING, logger="adapterhub.server"):
        for adapter in ("a", "b", "a"):
            assert client.post("/generate", json={"prompt": "the movie", "adapter": adapter}).status_code == 200
    assert "ALERT p95 latency" in caplog.text
    metrics = client.get("/metrics").text
    for name in ("adapterhub_request_latency_seconds_bucket", "adapterhub_adapter_swaps_total 2.0",
                 "adapterhub_pool_hits_total", "adapterhub_pool_misses_total 2.0", 'adapterhub_memory_bytes{kind="slots"}',
                 "adapterhub_throughput_requests_per_second", "adapterhub_generated_tokens_total"):  # fmt: skip
        assert name in metrics
    assert client.get("/health").json()["alerts"] == ["p95"]


def test_classification_server_answers_labels_per_adapter(tiny_bert, tmp_path):
    base = load_base(tiny_bert, task="seq-cls", labels=["neg", "pos"])
    push_random_adapter(base, "sent", {"r": 2}, tmp_path, seed=4)
    pool = AdapterPool(load_base(tiny_bert, task="seq-cls", labels=["neg", "pos"]), slots=1, max_rank=2)
    with TestClient(create_app(pool)) as client:
        answer = client.post("/classify", json={"text": "great movie", "adapter": "sent"}).json()
        assert answer["label"] in ("neg", "pos") and sum(answer["scores"].values()) == pytest.approx(1.0)
        assert client.post("/generate", json={"prompt": "x"}).status_code == 400
