"""The HTTP server on tiny models: per-request adapters batched together, adapter management, metrics,
clear 4xx answers to bad input without the server going down, one failing request never failing the others
of its batch, and `adapterhub serve` itself (bad flags in one line; more adapters than slots and host cache)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from test_runtime import push_random_adapter
from tiny_models import make_tiny_llama
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from adapterhub.base import load_base
from adapterhub.cli import main
from adapterhub.cli.serve import serve_command, spec_from_flags
from adapterhub.runtime import AdapterPool, GenerationSettings, classify, generate
from adapterhub.server import AlertThresholds, ServerSettings, ServeSpec, build_server, create_app
from adapterhub.server.ray_serve.spec import ReplicaSpec
from adapterhub_registry import Registry

SENTIMENT = ["neg", "neu", "pos"]


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
    assert loaded.status_code == 200 and loaded.json() == {
        "adapter": "a@1",
        "kind": "slotted",
        "not_slottable_because": None,
    }
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
                 "adapterhub_pool_slot_hits_total", "adapterhub_pool_slot_misses_total 2.0", "adapterhub_pool_hits_total", 'adapterhub_memory_bytes{kind="slots"}',
                 "adapterhub_throughput_requests_per_second", "adapterhub_generated_tokens_total"):  # fmt: skip
        assert name in metrics
    assert client.get("/health").json()["alerts"] == ["p95"]


def test_classification_server_answers_labels_per_adapter(tiny_bert, tmp_path):
    base = load_base(tiny_bert, model_task="seq-cls", labels=["neg", "pos"])
    push_random_adapter(base, "sent", {"r": 2}, tmp_path, seed=4)
    pool = AdapterPool(load_base(tiny_bert, model_task="seq-cls", labels=["neg", "pos"]), slots=1, max_rank=2)
    with TestClient(create_app(pool)) as client:
        answer = client.post("/classify", json={"text": "great movie", "adapter": "sent"}).json()
        assert answer["label"] in ("neg", "pos") and sum(answer["scores"].values()) == pytest.approx(1.0)
        assert client.post("/generate", json={"prompt": "x"}).status_code == 400


def concurrently(client, path: str, bodies: list[dict]) -> list:
    with ThreadPoolExecutor(len(bodies)) as threads:
        return list(threads.map(lambda body: client.post(path, json=body), bodies))


def batches_run(client) -> float:
    metrics = client.get("/metrics").text
    return float(
        next(line for line in metrics.splitlines() if line.startswith("adapterhub_batch_size_count")).split()[-1]
    )


@pytest.fixture
def bert_server(tiny_bert, tmp_path):
    """A 3-label classification server; `sent-a` and `sent-b` are 3-label adapters, `stars` a 5-label one."""
    base = load_base(tiny_bert, model_task="seq-cls", labels=SENTIMENT)
    push_random_adapter(base, "sent-a", {"r": 2}, tmp_path, seed=1)
    push_random_adapter(base, "sent-b", {"r": 2, "target_modules": "query,value"}, tmp_path, seed=2)
    push_random_adapter(
        load_base(tiny_bert, model_task="seq-cls", labels=list("12345")), "stars", {"r": 2}, tmp_path, seed=3
    )
    pool = AdapterPool(load_base(tiny_bert, model_task="seq-cls", labels=SENTIMENT), slots=2, max_rank=2)
    with TestClient(create_app(pool, ServerSettings(max_batch_size=8, max_wait_ms=300))) as client:
        yield client, pool


def test_an_adapter_with_another_number_of_labels_gets_409_and_its_batch_mates_their_answers(bert_server):
    client, pool = bert_server
    requests = [("great movie", "sent-a"), ("so boring", "stars"), ("i hate this", "sent-b"), ("fun film", None)]
    answers = concurrently(client, "/classify", [{"text": text, "adapter": adapter} for text, adapter in requests])
    assert [a.status_code for a in answers] == [200, 409, 200, 200]
    assert "5 labels" in answers[1].json()["detail"] and " 3 labels" in answers[1].json()["detail"]
    assert batches_run(client) < len(requests)  # the bad request shared a batch with good ones
    for (text, adapter), answer in zip(requests, answers):
        if adapter != "stars":
            alone = classify(pool, [text], [adapter])[0]
            assert answer.json()["label"] == alone.label and answer.json()["adapter"] == adapter
            assert answer.json()["scores"] == pytest.approx(alone.scores, abs=1e-5)
    assert client.post("/adapters/load", json={"ref": "stars"}).status_code == 409


def narrow_llama(directory, tiny_llama):
    """A llama like tiny_llama at half the width: its adapters' LoRA factors do not fit tiny_llama's layers."""
    config = LlamaConfig.from_pretrained(tiny_llama).to_dict()
    LlamaForCausalLM(
        LlamaConfig(**{**config, "hidden_size": 32, "intermediate_size": 64, "head_dim": 8})
    ).save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(directory)
    return directory


def test_a_request_that_fails_inside_its_batch_fails_alone_and_the_others_get_their_answers(
    llama_server, tiny_llama, tmp_path
):
    client, pool = llama_server
    push_random_adapter(load_base(narrow_llama(tmp_path / "narrow", tiny_llama)), "narrow", {"r": 2}, tmp_path)
    (tmp_path / "narrow" / "adapterhub.json").unlink()  # a plain PEFT adapter: no base recorded to refuse it by
    Registry().push("unrecorded", tmp_path / "narrow", method="lora")
    requests = [("the movie was", "a"), ("so fun", "unrecorded"), ("i love this film", "b"), ("they drive", None)]
    answers = concurrently(client, "/generate", [{"prompt": p, "adapter": a, "max_new_tokens": 5} for p, a in requests])
    assert [a.status_code for a in answers] == [200, 409, 200, 200]  # its LoRA factors do not fit this base
    assert "does not fit this base" in answers[1].json()["detail"]
    assert batches_run(client) < len(requests)
    for (prompt, adapter), answer in zip(requests, answers):
        if adapter != "unrecorded":
            alone = generate(pool, [prompt], [adapter], GenerationSettings(max_new_tokens=5))[0]
            assert answer.json() == {"text": alone.text, "tokens": alone.tokens, "adapter": adapter}


def test_a_damaged_blob_is_a_server_fault_naming_the_entry_and_verify(llama_server, tiny_llama, tmp_path):
    client, _ = llama_server
    broken = push_random_adapter(load_base(tiny_llama), "broken", {"r": 2}, tmp_path, seed=3)
    blob = Registry().root / "blobs" / "sha256" / broken.blob_sha256
    blob.write_bytes(blob.read_bytes()[:-4])
    answers = concurrently(
        client, "/generate", [{"prompt": "the movie", "adapter": "broken"}, {"prompt": "the movie", "adapter": "a"}]
    )
    assert [a.status_code for a in answers] == [500, 200]
    loaded = client.post("/adapters/load", json={"ref": "broken"})
    for detail in (answers[0].json()["detail"], loaded.json()["detail"]):
        assert "broken@1" in detail and "`adapterhub registry verify`" in detail
    assert loaded.status_code == 500


BAD_FLAGS = {
    "--slots": ["0", "-2", "many"], "--max-rank": ["0"], "--host-cache": ["-1"], "--port": ["0", "70000"],
    "--max-batch-size": ["0"], "--max-wait-ms": ["-1", "nan", "1e9"], "--max-input-tokens": ["0"],
    "--max-new-tokens": ["0"], "--alert-p95-ms": ["-5"], "--alert-memory-mb": ["-1"],
}  # fmt: skip


@pytest.mark.parametrize("option, value", [(o, v) for o, values in BAD_FLAGS.items() for v in values])
def test_serve_refuses_an_out_of_range_flag_in_one_line_naming_it(option, value, tiny_llama, capsys):
    assert main(["serve", "--base", str(tiny_llama), option, value]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: Invalid value for '{option}'"), err


def serve_flags(*args: str) -> dict:
    """The parameters `adapterhub serve ARGS` parses to, by name (nothing is loaded)."""
    return serve_command.make_context("serve", list(args)).params


def test_serve_flags_default_to_the_settings_dataclasses(tiny_llama):
    spec = spec_from_flags(serve_flags("--base", str(tiny_llama)))
    assert spec == ServeSpec(base=str(tiny_llama), settings=ServerSettings(model_name=tiny_llama.name))


def test_serve_flags_set_the_fields_they_are_named_after(tiny_llama, tmp_path):
    flags = serve_flags("--base", str(tiny_llama), "--max-running", "4", "--alert-p95-ms", "50", "--labels", "a,b",
                        "--load", "x", "--load", "y", "--device", "cpu", "--host-cache", "0", "--router", "seq",
                        "--model-name", "tiny", "--allow-lora-dir", str(tmp_path))  # fmt: skip
    spec = spec_from_flags(flags)
    settings = spec.settings
    assert (settings.max_running, settings.alerts, settings.model_name) == (4, AlertThresholds(50.0), "tiny")
    assert settings.allow_lora_dir == tmp_path and spec.placement.device == "cpu"
    assert (spec.labels, spec.preload, spec.host_cache, spec.router) == (("a", "b"), ("x", "y"), 0, "seq")


def test_build_server_builds_the_same_server_from_the_cli_flags_and_for_a_replica(tiny_bert, tmp_path):
    push_random_adapter(
        load_base(tiny_bert, model_task="seq-cls", labels=SENTIMENT), "senti", {"r": 2}, tmp_path, seed=5
    )
    spec = spec_from_flags(serve_flags("--base", str(tiny_bert), "--load", "senti", "--slots", "3", "--max-rank", "2",
                                       "--batching", "static", "--max-wait-ms", "0"))  # fmt: skip
    replica_spec = ReplicaSpec.of(spec, replicas=2)
    assert replica_spec.registry_root == Registry().root and replica_spec.model_task is None  # each replica infers
    alone, replica = build_server(spec), build_server(replica_spec.replica_server())
    for built in (alone, replica):  # the model task and labels recorded by the adapter: no --task or --labels given
        assert (built.spec.model_task, built.spec.labels) == ("seq-cls", tuple(SENTIMENT))
        assert built.state.pool.base.labels == SENTIMENT and built.state.pool.slots == 3
        assert built.loaded == ("senti@1 (slotted)",)
    assert replica.state.settings == alone.state.settings == spec.settings
    answers = []
    for built in (alone, replica):
        with TestClient(built.app) as client:
            answers.append(client.post("/classify", json={"text": "the movie was fine", "adapter": "senti"}).json())
    assert answers[0] == answers[1] and answers[0]["label"] in SENTIMENT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_serve(log, *args: str) -> subprocess.Popen:
    """`adapterhub serve ARGS` in a fresh process (this test's registry), its output to the file ``log``."""
    executable = shutil.which("adapterhub")
    assert executable, "the adapterhub console script is not installed"
    return subprocess.Popen([executable, "serve", *args], stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))


@pytest.mark.integration
def test_serve_console_script_refuses_a_bad_flag_in_one_line_without_traceback(tiny_llama):
    server = run_serve(subprocess.PIPE, "--base", str(tiny_llama), "--slots", "0")
    output = server.communicate(timeout=120)[0].decode()
    assert server.returncode == 1 and "Traceback" not in output
    assert output.strip().splitlines() == [
        "error: Invalid value for '--slots': 0 is not in the range x>=1. See `adapterhub serve --help`."
    ]


@pytest.mark.integration
def test_serve_with_more_adapters_than_slots_and_host_cache_answers_each_as_alone(tiny_llama, tmp_path):
    base = load_base(tiny_llama)
    names = [f"n{i}" for i in range(4)]
    for seed, name in enumerate(names):
        push_random_adapter(base, name, {"r": 2}, tmp_path, seed)
    port = free_port()
    preload = [arg for name in names[:3] for arg in ("--load", name)]  # three loads into 2 slots + 1 host entry
    log = (tmp_path / "serve.log").open("w")
    server = run_serve(log, "--base", str(tiny_llama), "--slots", "2", "--host-cache", "1", "--max-rank", "2", *preload,
                       "--port", str(port))  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 120
            while True:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "the server did not start"
                try:
                    client.get("/health")
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            answers = [client.post("/generate", json={"prompt": "the movie was", "adapter": name, "max_new_tokens": 4})
                       for name in names + names[::-1]]  # fmt: skip
            tiers = [a["tier"] for a in client.get("/adapters").json()["adapters"]]
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert [a.status_code for a in answers] == [200] * 8
    pool = AdapterPool(load_base(tiny_llama), slots=4, max_rank=2)
    for name, answer in zip(names + names[::-1], answers):
        alone = generate(pool, ["the movie was"], [name], GenerationSettings(max_new_tokens=4))[0]
        assert answer.json() == {"text": alone.text, "tokens": alone.tokens, "adapter": name}
    assert tiers.count("device") == 2 and tiers.count("host") == 1
