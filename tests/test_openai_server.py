"""The OpenAI-compatible routes driven by the official ``openai`` client against the server on loopback (a tiny
Llama, two adapters): models list, completion, chat completion, streaming (chunks arrive while the request is
still running), a wrong key (401), an unknown model (404 as an OpenAI error), a client that disconnects
mid-stream (its row is freed), vLLM's load/unload_lora_adapter, per-adapter metrics; and the static batcher."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from live_server import LiveServer

from adapterhub import adapters
from adapterhub.base import load_base
from adapterhub.runtime import AdapterPool, GenerationSettings, generate
from adapterhub.server import ServerSettings, create_app
from adapterhub_registry import Registry

KEY = "sk-test-key"
CHAT_TEMPLATE = "{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}{% if add_generation_prompt %}<s> assistant{% endif %}"


def push_adapter(base, registry: Registry, name: str, directory: Path, seed: int, target_modules="all-linear"):
    import torch

    torch.manual_seed(seed)
    options = adapters.make_options("lora", {"r": 4, "target_modules": target_modules})
    model = adapters.attach(base, "lora", options)
    for _, parameter in model.named_parameters():
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.2)
    saved = adapters.save_adapter(model, directory / name, adapters.build_manifest(base, "lora", options))
    model.unload()
    return registry.push(name, saved, method="lora", base_fingerprint=base.fingerprint_id), saved


@pytest.fixture(scope="module")
def served(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("openai")
    registry = Registry(root / "registry")
    base = load_base(tiny_llama)
    base.tokenizer.chat_template = CHAT_TEMPLATE
    push_adapter(base, registry, "a", root, 1)
    push_adapter(base, registry, "b", root, 2, target_modules="q_proj,v_proj")
    _, peft_dir = push_adapter(base, registry, "c", root, 3)
    pool = AdapterPool(base, slots=2, max_rank=4, registry=registry)
    references = {(p, a): generate(pool, [p], [a], GenerationSettings(max_new_tokens=6, min_new_tokens=6))[0].text
                  for p in ("the movie was", "i love this film") for a in ("a@1", "b@1", None)}  # fmt: skip
    settings = ServerSettings(
        max_input_tokens=64, max_new_tokens=100, model_name="tiny", api_key=KEY, allow_lora_dir=root
    )
    server = LiveServer(create_app(pool, settings))
    yield server, references, peft_dir
    server.stop()
    pool.close()


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served[0].url + "/v1", api_key=KEY, max_retries=0)


@pytest.mark.integration
def test_models_list_the_base_and_every_adapter_of_the_registry(client):
    models = {m.id: m for m in client.models.list().data}
    assert {"tiny", "a", "b", "c"} <= set(models)
    assert models["a"].model_extra["root"] == "a@1" and models["a"].model_extra["parent"] == "tiny"


@pytest.mark.integration
def test_completion_and_stream_equal_the_request_served_alone(client, served):
    _, references, _ = served
    for adapter, model in (("a@1", "a"), (None, "tiny"), ("b@1", "b@1")):
        done = client.completions.create(
            model=model, prompt="the movie was", max_tokens=6, temperature=0, extra_body={"min_tokens": 6}
        )
        assert done.choices[0].text == references[("the movie was", adapter)]
        assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 6
        assert done.usage.prompt_tokens == len(
            served[0].app.state.adapterhub.pool.base.tokenizer("the movie was")["input_ids"]
        )
        stream = client.completions.create(model=model, prompt="i love this film", max_tokens=6, temperature=0, stream=True,
                                           stream_options={"include_usage": True}, extra_body={"min_tokens": 6})  # fmt: skip
        chunks = list(stream)
        assert "".join(c.choices[0].text for c in chunks if c.choices) == references[("i love this film", adapter)]
        assert chunks[-1].usage.completion_tokens == 6 and not chunks[-1].choices


@pytest.mark.integration
def test_chat_completion_streams_chunks_while_the_request_is_still_running(client, served):
    server = served[0]
    whole = client.chat.completions.create(model="a", messages=[{"role": "user", "content": "the movie was great"}],
                                           max_tokens=5, temperature=0, extra_body={"min_tokens": 5})  # fmt: skip
    assert whole.choices[0].message.role == "assistant" and whole.usage.completion_tokens == 5
    engine = server.app.state.adapterhub.engine
    stream = client.chat.completions.create(model="a", messages=[{"role": "user", "content": "the movie was great"}],
                                            max_tokens=80, temperature=0, stream=True, extra_body={"min_tokens": 80})  # fmt: skip
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant"
    running_when_first_arrived = engine.active
    rest = list(stream)
    assert running_when_first_arrived == 1 and engine.active == 0  # the first chunk came before the last token was made
    assert rest[-1].choices[0].finish_reason == "length" and rest[-1].usage.completion_tokens == 80
    text = first.choices[0].delta.content + "".join(c.choices[0].delta.content or "" for c in rest)
    assert text.startswith(whole.choices[0].message.content)


@pytest.mark.integration
def test_a_wrong_key_is_401_and_an_unknown_model_a_404_openai_error(client, served):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served[0].url + "/v1", api_key="sk-wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="nope", prompt="the movie", max_tokens=2)
    assert missing.value.body["code"] == "model_not_found" and missing.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as best_of:
        client.completions.create(model="a", prompt="the movie", max_tokens=2, n=2, best_of=3)
    assert best_of.value.body["param"] == "best_of" and "best_of=3" in best_of.value.body["message"]
    with pytest.raises(openai.BadRequestError) as over:
        client.completions.create(model="a", prompt="the movie", max_tokens=101)
    assert over.value.body["param"] == "max_tokens"
    assert httpx.get(served[0].url + "/health").status_code == 200  # no key needed there


@pytest.mark.integration
def test_a_client_that_disconnects_mid_stream_frees_its_row(served, client):
    server = served[0]
    state = server.app.state.adapterhub
    step = state.engine.step

    def slowed_step():  # a step of the tiny model takes a few ms; slow it so the request is surely still running
        time.sleep(0.03)
        return step()

    state.engine.step = slowed_step
    try:
        body = {
            "model": "b",
            "prompt": "the movie was",
            "max_tokens": 90,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
        with httpx.stream(
            "POST", server.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
        ) as answer:
            lines = answer.iter_lines()
            assert next(lines).startswith("data: ")
            assert state.engine.active == 1
        deadline = time.monotonic() + 10
        while state.engine.active and time.monotonic() < deadline:
            time.sleep(0.02)
        assert state.engine.active == 0
        text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        assert 'adapterhub_adapter_cancelled_total{adapter="b"} 1.0' in text
        assert "adapterhub_running_rows 0.0" in text
    finally:
        state.engine.step = step
    after = client.completions.create(model="b", prompt="the movie was", max_tokens=3, temperature=0)
    assert after.choices[0].finish_reason in ("length", "stop")


@pytest.mark.integration
def test_load_and_unload_lora_adapter_like_vllm(served, client):
    server, _, peft_dir = served
    auth = {"Authorization": f"Bearer {KEY}"}
    loaded = httpx.post(
        server.url + "/v1/load_lora_adapter", json={"lora_name": "mine", "lora_path": "a@1"}, headers=auth
    )
    assert loaded.status_code == 200, loaded.text
    mine = client.completions.create(
        model="mine", prompt="the movie was", max_tokens=6, temperature=0, extra_body={"min_tokens": 6}
    )
    assert mine.choices[0].text == served[1][("the movie was", "a@1")]
    imported = httpx.post(
        server.url + "/v1/load_lora_adapter", json={"lora_name": "fromdir", "lora_path": str(peft_dir)}, headers=auth
    )
    assert imported.status_code == 200, imported.text
    assert {m.id for m in client.models.list().data} >= {"mine", "fromdir"}
    outside = httpx.post(
        server.url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/etc"}, headers=auth
    )
    assert outside.status_code == 403 and outside.json()["error"]["param"] == "lora_path"
    assert (
        httpx.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "mine"}, headers=auth).status_code == 200
    )
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="mine", prompt="the movie", max_tokens=2)
    assert (
        httpx.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "mine"}, headers=auth).status_code == 404
    )


@pytest.mark.integration
def test_per_adapter_metrics_are_bounded_to_the_busiest(served, client):
    for model in ("a", "a", "b", "tiny"):
        client.completions.create(model=model, prompt="the movie", max_tokens=2, temperature=0)
    state = served[0].app.state.adapterhub
    state.adapter_metrics.top = 2
    try:
        text = httpx.get(served[0].url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    finally:
        state.adapter_metrics.top = 20
    shown = {
        line.split('adapter="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("adapterhub_adapter_requests_total")
    }
    assert len(shown) == 3 and "other" in shown
    assert 'adapterhub_time_to_first_token_seconds_count{adapter="a"}' in text
    assert "adapterhub_inter_token_latency_seconds_bucket" in text and "adapterhub_queue_depth" in text


def test_static_batching_answers_whole_and_chat_needs_a_template(tiny_llama, tmp_path):
    registry = Registry(tmp_path / "registry")
    base = load_base(tiny_llama)
    base.tokenizer.chat_template = None
    push_adapter(base, registry, "a", tmp_path, 1)
    pool = AdapterPool(base, slots=2, max_rank=4, registry=registry)
    settings = ServerSettings(batching="static", max_wait_ms=30, max_new_tokens=20, model_name="tiny")
    reference = {n: generate(pool, ["the movie was"], ["a@1"], GenerationSettings(max_new_tokens=n, min_new_tokens=n))[0].text
                 for n in (3, 7)}  # fmt: skip
    with TestClient(create_app(pool, settings)) as client:
        from concurrent.futures import ThreadPoolExecutor

        bodies = [
            {"model": "a", "prompt": "the movie was", "max_tokens": n, "temperature": 0, "ignore_eos": True}
            for n in (3, 7)
        ]
        with ThreadPoolExecutor(2) as threads:
            answers = list(threads.map(lambda b: client.post("/v1/completions", json=b), bodies))
        assert [a.json()["choices"][0]["text"] for a in answers] == [reference[3], reference[7]]
        assert [a.json()["usage"]["completion_tokens"] for a in answers] == [3, 7]
        streamed = client.post("/v1/completions", json={**bodies[1], "stream": True})
        events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[0])["choices"][0]["text"] == reference[7]
        chat = client.post("/v1/chat/completions", json={"model": "a", "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 400 and "no chat template" in chat.json()["error"]["message"]
    pool.close()


@pytest.mark.integration
def test_a_tag_moved_in_the_registry_is_picked_up_by_the_next_request(served, client, tmp_path):
    server, references, _ = served
    registry = server.app.state.adapterhub.pool.registry
    base = server.app.state.adapterhub.pool.base
    first, _ = push_adapter(base, registry, "t", tmp_path, 1)  # the same weights as "a"
    second, _ = push_adapter(base, registry, "t", tmp_path / "v2", 5)
    registry.tag(first.ref, "prod")
    before = client.completions.create(
        model="t:prod", prompt="the movie was", max_tokens=6, temperature=0, extra_body={"min_tokens": 6}
    )
    registry.tag(second.ref, "prod")
    after = client.completions.create(
        model="t:prod", prompt="the movie was", max_tokens=6, temperature=0, extra_body={"min_tokens": 6}
    )
    assert before.choices[0].text == references[("the movie was", "a@1")] != after.choices[0].text


@pytest.mark.integration
def test_an_adapter_that_is_not_slottable_is_served_through_peft(served, client, tmp_path):
    from test_runtime import push_random_adapter

    state = served[0].app.state.adapterhub
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAPTERHUB_HOME", str(state.pool.registry.root.parent))
        push_random_adapter(state.pool.base, "biased", {"r": 4, "bias": "lora_only"}, tmp_path, seed=7)
    streamed = client.completions.create(model="biased", prompt="the movie was", max_tokens=5, temperature=0, stream=True,
                                         extra_body={"min_tokens": 5})  # fmt: skip
    chunks = list(streamed)
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 5
    assert [a["tier"] for a in state.pool.describe() if a["adapter"] == "biased@1"] == ["peft"]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "example.org"])
def test_serve_refuses_a_reachable_address_without_a_key(host, tiny_llama, capsys):
    from adapterhub.cli import main

    assert main(["serve", "--base", str(tiny_llama), "--host", host]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--api-key" in err and "--allow-unauthenticated" in err, err


def test_a_server_with_a_remote_serves_what_a_training_machine_pushed_there(tiny_llama, tmp_path):
    from adapterhub.server.remote_refs import RemoteRefs
    from adapterhub_registry.remote_config import RemoteConfigs

    base = load_base(tiny_llama)
    trainer, serving = Registry(tmp_path / "trainer"), Registry(tmp_path / "server")
    for registry in (trainer, serving):
        RemoteConfigs(registry.root).add("shared", f"file://{tmp_path / 'shared'}")
    push_adapter(base, trainer, "fresh", tmp_path / "v1", 1)
    trainer.remote("shared").push("fresh@1", tags=["prod"])
    pool = AdapterPool(base, slots=2, max_rank=4, registry=serving)
    remote = RemoteRefs(serving, serving.remote("shared"), ttl=0)
    body = {"model": "fresh:prod", "prompt": "the movie was", "max_tokens": 4, "temperature": 0, "min_tokens": 4}
    with TestClient(create_app(pool, ServerSettings(model_name="tiny"), remote=remote)) as client:
        first = client.post("/v1/completions", json=body)
        assert first.status_code == 200, first.text
        fetched = serving.resolve("fresh")
        assert (
            fetched.manifest["remote"]["ref"] == "fresh@1"
            and fetched.blob_sha256 == trainer.resolve("fresh@1").blob_sha256
        )
        push_adapter(base, trainer, "fresh", tmp_path / "v2", 5)
        trainer.remote("shared").push("fresh@2", tags=["prod"])  # the tag moves on the remote
        second = client.post("/v1/completions", json=body)
        assert serving.resolve("fresh").manifest["remote"]["ref"] == "fresh@2"
        assert second.json()["choices"][0]["text"] != first.json()["choices"][0]["text"]
        missing = client.post("/v1/completions", json={**body, "model": "nowhere"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    pool.close()
