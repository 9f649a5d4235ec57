"""What the server says about itself is true: every /metrics series counts the traffic of every route (or says which
it counts), a body that is not JSON is answered as such with its line and column, a limit names the `adapterhub
serve` flag that raises it, and /docs works offline (its assets come from the server). Driven over loopback with
the official ``openai`` client and httpx, on a tiny Llama with one adapter."""

from __future__ import annotations

import re

import httpx
import openai
import pytest
from live_server import LiveServer
from prometheus_client.parser import text_string_to_metric_families
from test_openai_server import CHAT_TEMPLATE, push_adapter

from adapterhub.base import load_base
from adapterhub.runtime import AdapterPool
from adapterhub.server import ServerSettings, create_app
from adapterhub_registry import Registry

pytestmark = pytest.mark.integration
V1_TOKENS = {"whole completion": 3, "streamed completion": 4, "whole chat": 5, "streamed chat": 2}


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("truth")
    registry = Registry(root / "registry")
    base = load_base(tiny_llama)
    base.tokenizer.chat_template = CHAT_TEMPLATE
    push_adapter(base, registry, "a", root, 1)
    pool = AdapterPool(base, slots=2, max_rank=4, registry=registry)
    settings = ServerSettings(max_input_tokens=32, max_new_tokens=20, max_body_bytes=4096, model_name="tiny")
    live = LiveServer(create_app(pool, settings))
    yield live
    live.stop()
    pool.close()


def _families(url: str) -> dict:
    text = httpx.get(url + "/metrics").text
    return {family.name: family for family in text_string_to_metric_families(text)}


def _value(family, sample_name: str, **labels) -> float:
    return sum(s.value for s in family.samples if s.name == sample_name and labels.items() <= s.labels.items())


def test_every_metric_counts_the_traffic_of_every_route(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    fixed = {"temperature": 0}
    counted = {"min_tokens": 0, "ignore_eos": True}
    generated = httpx.post(
        server.url + "/generate", json={"prompt": "the movie was", "adapter": "a", "max_new_tokens": 3}
    )
    assert generated.status_code == 200
    classified = httpx.post(server.url + "/classify", json={"text": "the movie", "adapter": "a", "template": "{text} was",
                                                            "labels": ["good", "bad"], "chat_template": False})  # fmt: skip
    assert classified.status_code == 200, classified.text
    n = V1_TOKENS
    whole = client.completions.create(model="a", prompt="the movie was", max_tokens=n["whole completion"], **fixed,
                                      extra_body={**counted, "min_tokens": n["whole completion"]})  # fmt: skip
    streamed = list(client.completions.create(model="a", prompt="i love", max_tokens=n["streamed completion"], stream=True,
                                              stream_options={"include_usage": True}, **fixed,
                                              extra_body={**counted, "min_tokens": n["streamed completion"]}))  # fmt: skip
    chat = client.chat.completions.create(model="a", messages=[{"role": "user", "content": "hi"}], **fixed,
                                          max_tokens=n["whole chat"], extra_body={**counted, "min_tokens": n["whole chat"]})  # fmt: skip
    streamed_chat = list(client.chat.completions.create(model="a", messages=[{"role": "user", "content": "hi"}], stream=True,
                                                        max_tokens=n["streamed chat"], stream_options={"include_usage": True},
                                                        **fixed, extra_body={**counted, "min_tokens": n["streamed chat"]}))  # fmt: skip
    v1_tokens = [whole.usage.completion_tokens, streamed[-1].usage.completion_tokens, chat.usage.completion_tokens,
                 streamed_chat[-1].usage.completion_tokens]  # fmt: skip
    assert v1_tokens == list(n.values())
    all_tokens = generated.json()["tokens"] + sum(v1_tokens)
    # a continuous request's first token comes from its prefill, each later one from a decode step (of one row here)
    decode_steps = sum(count - 1 for count in v1_tokens)
    routes = ("/generate", "/classify", "/v1/completions", "/v1/chat/completions")

    families = _families(server.url)
    expected = {
        "adapterhub_request_latency_seconds": lambda f: all(_value(f, f.name + "_count", endpoint=r) >= 1 for r in routes),
        "adapterhub_requests": lambda f: [_value(f, f.name + "_total", endpoint=r, status="200") for r in routes] == [1, 1, 2, 2],
        "adapterhub_generated_tokens": lambda f: _value(f, f.name + "_total") == all_tokens,
        "adapterhub_batch_size": lambda f: (_value(f, f.name + "_count"), _value(f, f.name + "_sum")) == (2 + decode_steps, 2 + decode_steps),
        "adapterhub_throughput_requests_per_second": lambda f: _value(f, f.name) > 0,
        "adapterhub_pool_slot_hits": lambda f: _value(f, f.name + "_total") >= 1 + len(v1_tokens) + decode_steps,
        "adapterhub_pool_slot_misses": lambda f: _value(f, f.name + "_total") == 1,
        "adapterhub_pool_hits": lambda f: _value(f, f.name + "_total") == _value(families["adapterhub_pool_slot_hits"], "adapterhub_pool_slot_hits_total"),
        "adapterhub_pool_misses": lambda f: _value(f, f.name + "_total") == 1,
        "adapterhub_adapter_swaps": lambda f: _value(f, f.name + "_total") == 1,
        "adapterhub_registry_loads": lambda f: _value(f, f.name + "_total") == 1,
        "adapterhub_device_evictions": lambda f: _value(f, f.name + "_total") == 0,
        "adapterhub_host_evictions": lambda f: _value(f, f.name + "_total") == 0,
        "adapterhub_memory_bytes": lambda f: _value(f, f.name, kind="slots") > 0,
        "adapterhub_adapters_resident": lambda f: _value(f, f.name) == 1,
        "adapterhub_adapter_requests": lambda f: _value(f, f.name + "_total", adapter="a") == 5,  # /generate and /v1/
        "adapterhub_adapter_generated_tokens": lambda f: _value(f, f.name + "_total", adapter="a") == all_tokens,
        "adapterhub_adapter_cancelled": lambda f: _value(f, f.name + "_total") == 0,
        "adapterhub_time_to_first_token_seconds": lambda f: _value(f, f.name + "_count", adapter="a") == 5,
        "adapterhub_inter_token_latency_seconds": lambda f: _value(f, f.name + "_count", adapter="a") == decode_steps,
        "adapterhub_queue_depth": lambda f: _value(f, f.name) == 0,
        "adapterhub_running_rows": lambda f: _value(f, f.name) == 0,
    }  # fmt: skip
    ours = {
        name: family
        for name, family in families.items()
        if name.startswith("adapterhub_") and not name.endswith("_created")
    }
    assert set(ours) == set(expected), "a series this test does not check (or one that is gone)"
    wrong = {name: [(s.name, s.labels, s.value) for s in family.samples] for name, family in ours.items()
             if not expected[name](family)}  # fmt: skip
    assert not wrong
    # a series that leaves some routes out says which it counts
    for name in ("adapterhub_adapter_requests", "adapterhub_time_to_first_token_seconds", "adapterhub_queue_depth",
                 "adapterhub_running_rows"):  # fmt: skip
        assert "/v1/" in ours[name].documentation, ours[name].documentation
    assert "/classify" in ours["adapterhub_batch_size"].documentation


@pytest.mark.parametrize("path", ["/v1/completions", "/generate"])
def test_a_body_that_is_not_json_is_answered_with_its_line_and_column(server, path):
    body = '{\n  "model": "tiny",\n  "prompt": "the movie",\n}'
    answer = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == (400 if path.startswith("/v1/") else 422)
    if path.startswith("/v1/"):
        error = answer.json()["error"]
        message = error["message"]
        assert error["param"] is None
    else:
        message = answer.json()["detail"]
    assert "not valid JSON" in message and "line 4, column 1" in message, message
    assert "body.4" not in message and "JSON decode error" not in message


def test_each_limit_names_the_serve_flag_that_raises_it(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError) as too_many:
        client.completions.create(model="tiny", prompt="the movie", max_tokens=100000)
    assert "limit of 20" in too_many.value.message and "--max-new-tokens" in too_many.value.message
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="tiny", prompt="the movie " * 40, max_tokens=2)
    assert "--max-input-tokens" in too_long.value.message
    cases = {
        "/generate": ({"prompt": "the movie", "max_new_tokens": 1000}, "--max-new-tokens"),
        "/classify": ({"text": "the movie " * 40, "template": "{text}", "labels": ["good", "bad"]}, "--max-input-tokens"),
    }  # fmt: skip
    for path, (body, flag) in cases.items():
        answer = httpx.post(server.url + path, json=body)
        assert answer.status_code == 413 and flag in answer.json()["detail"], answer.text
    oversized = httpx.post(server.url + "/generate", json={"prompt": "the " * 2000})
    assert oversized.status_code == 413 and "--max-body-bytes" in oversized.json()["detail"], oversized.text


def test_docs_load_every_asset_from_the_server(server):
    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
    assert urls, page.text
    outside = [u for u in urls if re.match(r"(https?:)?//", u) and not u.startswith(server.url)]
    assert not outside, outside
    assert not re.findall(r"https?://", page.text), "the page names an address outside the server"
    for url in urls:
        asset = httpx.get(server.url + url if url.startswith("/") else url)
        assert asset.status_code == 200 and asset.content, url
    assert httpx.get(server.url + "/redoc").status_code == 404  # turned off: it would load redoc from a CDN


def test_the_flags_the_limits_name_are_flags_of_serve():
    from click.testing import CliRunner

    from adapterhub.cli.serve import serve_command

    help_text = CliRunner().invoke(serve_command, ["--help"], terminal_width=200).output
    for flag in ("--max-new-tokens", "--max-input-tokens", "--max-body-bytes", "--max-waiting"):
        assert flag in help_text, flag
