"""The web pages through FastAPI's TestClient: the adapters table paged, searched, filtered and sorted on a registry
of a few hundred real tiny adapters (and `Registry.page` itself), a 400 page for each bad query, escaping of a
hostile manifest, sign-in / CSRF / tag moves, lineage links of a merged and a fetched adapter, comparing versions,
the training curve, the benchmark results (and nothing outside their folder); under `serve` (a tiny Llama) the
live serving view, the playground's token and loading from the page. `adapterhub ui` as a process: integration."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from test_registry_support import write_adapter

from adapterhub.web import ui_app
from adapterhub_registry import Registry
from adapterhub_registry.remote_config import RemoteConfigs

KEY = "sk-ui-key"
TOPICS = ("news", "sentiment", "code", "legal")
N = 240
BASE_A, BASE_B = "a" * 64, "b" * 64


def _refs(html: str) -> list[str]:
    return re.findall(r'<tr data-ref="([^"]+)"', html)


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> Registry:
    """N names (a few with 2 versions), methods, tags, two bases, metrics on most, descriptions."""
    root = tmp_path_factory.mktemp("ui")
    registry = Registry(root / "registry")
    source = write_adapter(root / "source", seed=0)
    for i in range(N):
        metrics = {"accuracy": round(i / N, 4)} if i % 7 else {}
        registry.push(f"{TOPICS[i % 4]}-{i:04d}", source, method="lora" if i % 3 else "ia3",
                      base_fingerprint=BASE_A if i % 2 else BASE_B, metrics=metrics,
                      manifest={"description": f"{TOPICS[i % 4]} adapter {i}"},
                      tags=["prod"] if i % 10 == 0 else [])  # fmt: skip
    for i in range(0, 30, 3):  # a second version: the table shows it, with the first's tag left on @1
        registry.push(f"{TOPICS[i % 4]}-{i:04d}", source, method="lora", base_fingerprint=BASE_A,
                      metrics={"accuracy": 0.99}, manifest={"description": "retrained"})  # fmt: skip
    return registry


@pytest.fixture
def client(filled) -> TestClient:
    return TestClient(ui_app(filled, api_key=None, bench_results=None))


def test_the_root_redirects_to_the_adapters(client):
    answer = client.get("/ui/", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/adapters"


def test_pages_cover_every_name_once_with_its_newest_version(client, filled):
    first = client.get("/ui/adapters", params={"size": 100, "sort": "name"})
    assert first.status_code == 200 and '<span id="total">240</span>' in first.text
    assert 'rel="next"' in first.text and 'rel="prev"' not in first.text
    seen = []
    for page in (1, 2, 3):
        html = client.get("/ui/adapters", params={"size": 100, "sort": "name", "page": page}).text
        seen += _refs(html)
    assert 'rel="next"' not in html and 'rel="prev"' in html
    assert len(seen) == N and len(set(seen)) == N
    assert seen == sorted(seen, key=lambda ref: ref.split("@")[0])
    assert "news-0000@2" in seen and "news-0000@1" not in seen


def test_search_matches_what_registry_search_finds(client, filled):
    for query in ("sentiment", "RETRAINED", "ia3", "prod", "0042"):
        html = client.get("/ui/adapters", params={"q": query, "size": 200}).text
        expected = {r.ref for r in filled.search(query, limit=None)}
        assert set(_refs(html)) == expected and expected, query


def test_filters_by_tag_method_base_and_metric(filled):
    tagged, total = filled.page(tag="prod", limit=200)
    assert total == N // 10 and all("prod" in r.tags for r in tagged)
    assert {r.version for r in tagged if r.name == "news-0000"} == {1}  # the tag stayed on @1
    methods, _ = filled.page(method="ia3", limit=200)
    assert methods and all(r.method == "ia3" for r in methods)
    on_b, _ = filled.page(base="bbbb", limit=200)
    assert on_b and all(r.base_fingerprint == BASE_B for r in on_b)
    good, total = filled.page(metrics=["accuracy>=0.5"], limit=200)
    assert total == len(good) and all(r.metrics["accuracy"] >= 0.5 for r in good)
    assert total == sum(1 for r in filled.list() if r.metrics.get("accuracy", -1) >= 0.5)


def test_metric_sort_puts_versions_without_the_metric_last(client, filled):
    html = client.get("/ui/adapters", params={"sort": "-metric:accuracy", "size": 200}).text
    refs = _refs(html)
    records = [filled.resolve(ref) for ref in refs]
    values = [r.metrics.get("accuracy") for r in records]
    measured = [v for v in values if v is not None]
    assert measured == sorted(measured, reverse=True) and values[: len(measured)] == measured
    ascending, _ = filled.page(sort="metric:accuracy", limit=5)
    assert [r.metrics["accuracy"] for r in ascending] == sorted(r.metrics["accuracy"] for r in ascending)


@pytest.mark.parametrize(
    "query, says",
    [
        ("size=201", "over the most this page shows, 200"),
        ("size=0", "not a whole number from 1"),
        ("page=abc", "not a whole number from 1"),
        ("page=99999999999999999999", "not a whole number from 1"),
        ("page=99", "past the end: 240 adapters match"),
        ("colour=red", "unknown filter 'colour'"),
        ("sort=popularity", "unknown sort 'popularity'"),
        ("metric=accuracy", "has no comparison"),
        ("metric=accuracy>=high", "is not a number"),
        ('metric=acc"uracy>=1', "metric name"),
        ("sort=metric:a'b", "metric name"),
    ],
)
def test_bad_queries_answer_a_400_page_saying_what_to_do(client, query, says):
    answer = client.get(f"/ui/adapters?{query}")
    assert answer.status_code == 400 and answer.headers["content-type"].startswith("text/html")
    message = re.search(r'<p id="error">(.*?)</p>', answer.text, re.S).group(1)
    assert says.replace("'", "&#39;").replace('"', "&#34;") in message


def test_unknown_adapter_and_bad_version_are_clear_pages(client):
    assert client.get("/ui/adapters/nothing-here").status_code == 404
    assert client.get("/ui/adapters/news-0000/first").status_code == 400
    assert client.get("/ui/adapters/news-0000/99999999999999999999").status_code == 400
    assert client.get("/ui/adapters/news-0000/compare?a=1").status_code == 400
    missing = client.get("/ui/no-such-page")
    assert missing.status_code == 404 and "start from /ui/adapters" in missing.text


def test_a_hostile_manifest_is_shown_as_text(tmp_path):
    registry = Registry(tmp_path / "registry")
    hostile = "<script>alert(1)</script> <img src=x onerror=alert(1)>"
    manifest = {"description": hostile, "labels": [hostile], "data": {"path": hostile, "sha256": "0" * 64},
                "training": {"note": hostile}}  # fmt: skip
    registry.push("hostile", write_adapter(tmp_path / "a"), method="lora", manifest=manifest, metrics={hostile: 1.0})
    client = TestClient(ui_app(registry, api_key=None))
    for url in ("/ui/adapters/hostile", "/ui/adapters?q=script", "/ui/adapters/hostile/compare?a=1&b=1"):
        html = client.get(url).text
        assert "<script>alert" not in html and "<img src=x" not in html, url
    page = client.get("/ui/adapters/hostile")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "onerror=alert(1)&gt;" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


def _signed_in(registry: Registry) -> tuple[TestClient, str]:
    client = TestClient(ui_app(registry, api_key=KEY))
    answer = client.post("/ui/login", data={"key": KEY}, follow_redirects=False)
    assert answer.status_code == 303
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/adapters/news-0000").text).group(1)
    return client, csrf


def test_sign_in_sets_a_strict_http_only_cookie_that_is_not_the_key(filled):
    client = TestClient(ui_app(filled, api_key=KEY))
    wrong = client.post("/ui/login", data={"key": "guess"})
    assert wrong.status_code == 403 and "the key is not valid" in wrong.text
    answer = client.post("/ui/login", data={"key": KEY}, follow_redirects=False)
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie and KEY not in cookie
    assert 'id="move-tag"' in client.get("/ui/adapters/news-0000").text


def test_a_tag_moves_only_with_a_session_and_its_csrf_token(filled):
    client, csrf = _signed_in(filled)
    anonymous = TestClient(ui_app(filled, api_key=KEY))
    assert 'id="move-tag"' not in anonymous.get("/ui/adapters/news-0000").text
    form = {"tag": "staging", "version": "2"}
    for who, fields, says in ((anonymous, {**form, "csrf": csrf}, "sign in first"),
                              (client, form, "CSRF token does not match"),
                              (client, {**form, "csrf": "forged"}, "CSRF token does not match")):  # fmt: skip
        refused = who.post("/ui/adapters/news-0000/tags", data=fields)
        assert refused.status_code == 403 and says in re.search(r'<p id="error">(.*?)</p>', refused.text).group(1)
    assert "staging" not in {t for r in filled.list(name="news-0000", all_versions=True) for t in r.tags}
    moved = client.post("/ui/adapters/news-0000/tags", data={**form, "csrf": csrf}, follow_redirects=False)
    assert moved.status_code == 303 and moved.headers["location"] == "/ui/adapters/news-0000"
    assert filled.resolve("news-0000:staging").version == 2
    assert (
        client.post("/ui/adapters/news-0000/tags", data={"tag": "x", "version": "9", "csrf": csrf}).status_code == 404
    )
    client.post("/ui/logout", data={"csrf": csrf})
    assert client.post("/ui/adapters/news-0000/tags", data={**form, "csrf": csrf}).status_code == 403


def test_without_an_api_key_the_pages_are_read_only(filled, client):
    assert client.post("/ui/login", data={"key": KEY}).status_code == 403
    refused = client.post("/ui/adapters/news-0000/tags", data={"tag": "x", "version": "1", "csrf": "x"})
    assert refused.status_code == 403 and "--api-key" in refused.text


def test_lineage_of_a_merge_links_its_inputs_and_of_a_fetch_names_the_remote(tmp_path):
    registry = Registry(tmp_path / "registry")
    a = registry.push("in-a", write_adapter(tmp_path / "a", seed=1), method="lora")
    b = registry.push("in-b", write_adapter(tmp_path / "b", seed=2), method="lora")
    recipe = {"inputs": [{"ref": a.ref, "sha256": a.blob_sha256}, {"ref": b.ref, "sha256": b.blob_sha256}],
              "weights": [0.7, 0.3], "combination": "linear", "seed": 0}  # fmt: skip
    registry.push("merged", write_adapter(tmp_path / "m", seed=3), method="lora", manifest={"merge": recipe})
    client = TestClient(ui_app(registry, api_key=None))
    svg = re.search(r'<svg id="lineage".*?</svg>', client.get("/ui/adapters/merged").text, re.S).group(0)
    links = re.findall(r'<a class="lineage-link" href="([^"]+)"', svg)
    assert links == ["/ui/adapters/in-a/1", "/ui/adapters/in-b/1"]
    assert "data-ref" not in svg and "in-a@1" in client.get(links[0]).text
    assert "linear of 2 inputs, weights [0.7, 0.3]" in client.get("/ui/adapters/merged").text

    shared, other = tmp_path / "shared", Registry(tmp_path / "other")
    for each in (registry, other):
        RemoteConfigs(each.root).add("team", f"file://{shared}")
    registry.remote("team").push("merged")
    fetched = other.remote("team").fetch("merged")
    html = TestClient(ui_app(other, api_key=None)).get(f"/ui/adapters/merged/{fetched.version}").text
    assert "remote team: merged@1" in html and f"file://{shared}, version 1 there" in html
    assert "in-a@1" in html and "not in this registry" in html  # the inputs stayed behind: no link
    other.push("in-a", write_adapter(tmp_path / "a", seed=1), method="lora")
    html = TestClient(ui_app(other, api_key=None)).get("/ui/adapters/merged").text
    assert '<a class="lineage-link" href="/ui/adapters/in-a/1">' in html  # same bytes here now: linked


def test_compare_marks_the_settings_that_differ(tmp_path):
    registry = Registry(tmp_path / "registry")
    for lr, accuracy in ((0.001, 0.7), (0.01, 0.8)):
        registry.push("cmp", write_adapter(tmp_path / "a"), method="lora", metrics={"accuracy": accuracy},
                      manifest={"training": {"lr": lr, "epochs": 3}})  # fmt: skip
    html = TestClient(ui_app(registry, api_key=None)).get("/ui/adapters/cmp/compare?a=1&b=2").text
    table = re.search(r'<table id="compare">.*?</table>', html, re.S).group(0)
    differs = re.findall(r'<tr class="differs"><th>([^<]+)</th>', table)
    assert differs == ["manifest.training.lr"]  # same weights (same seed), same epochs
    assert "<th>manifest.training.epochs</th>" in table
    assert re.search(r'<tr class="differs"><th>accuracy</th><td>0.7</td><td>0.8</td>', html)


def test_the_training_curve_is_drawn_when_the_run_recorded_one(tmp_path):
    registry = Registry(tmp_path / "registry")
    history = [{"epoch": e, "step": 10 * e, "train_loss": 1 / e, "accuracy": 0.5 + e / 10} for e in (1, 2, 3)]
    registry.push("curved", write_adapter(tmp_path / "a"), method="lora", manifest={"training": {"history": history}})
    registry.push("flat", write_adapter(tmp_path / "a"), method="lora")
    client = TestClient(ui_app(registry, api_key=None))
    svg = re.search(r'<svg id="curve".*?</svg>', client.get("/ui/adapters/curved").text, re.S).group(0)
    lines = re.findall(r'<polyline class="series series-\d" points="([^"]+)"><title>([^<]+)</title>', svg)
    assert [name for _, name in lines] == ["accuracy", "train_loss"]
    assert all(len(points.split()) == 3 for points, _ in lines)
    assert 'id="curve"' not in client.get("/ui/adapters/flat").text


def test_benchmarks_show_tables_and_plots_and_nothing_outside_their_folder(tmp_path, filled):
    results = tmp_path / "results"
    results.mkdir()
    (results / "ui-cpu.md").write_text("# `ui` benchmark\n\n| case | ms |\n|---|---:|\n| adapters page | **12.5** |\n")
    (results / "ui-cpu.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "secret.md").write_text("secret")
    (results / "leak.md").symlink_to(tmp_path / "secret.md")
    client = TestClient(ui_app(filled, api_key=None, bench_results=results))
    listing = client.get("/ui/benchmarks").text
    assert 'href="/ui/benchmarks/ui-cpu"' in listing and "leak" not in listing
    page = client.get("/ui/benchmarks/ui-cpu").text
    assert re.search(r'<table class="bench">.*<td>adapters page</td><td>12.5</td>', page, re.S)
    assert '<img src="/ui/benchmarks/files/ui-cpu.png"' in page
    assert client.get("/ui/benchmarks/files/ui-cpu.png").content.startswith(b"\x89PNG")
    for name in ("leak.md", "..%2Fsecret.md", "%2E%2E", "ui-cpu.txt"):
        assert client.get(f"/ui/benchmarks/files/{name}").status_code == 404, name
    assert client.get("/ui/benchmarks/leak").status_code == 404


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_adapterhub_ui_starts_without_a_model_and_answers(tmp_path):
    registry = Registry(tmp_path / "registry")
    registry.push("started", write_adapter(tmp_path / "a"), method="lora")
    port = _free_port()
    command = [sys.executable, "-c", "import sys; from adapterhub.cli import main; sys.exit(main())",
               "ui", "--registry", str(registry.root), "--port", str(port)]  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/ui/adapters", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read().decode()
                assert time.monotonic() - started < 30, "adapterhub ui did not answer within 30 s"
                time.sleep(0.05)
        assert answer.status_code == 200 and 'data-ref="started@1"' in answer.text
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.integration
def test_the_registry_pages_import_no_torch_or_transformers():
    code = ("import sys, adapterhub.web, adapterhub.cli.ui; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")  # fmt: skip
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "[]"


def test_lineage_names_the_base_the_data_an_import_and_a_continual_task(tmp_path):
    registry = Registry(tmp_path / "registry")
    manifest = {"imported_from": "peft", "base": {"fingerprint": BASE_A, "source": "tiny-llama"},
                "data": {"path": "tweets.csv", "sha256": "c" * 64},
                "continual": {"sequence": "tweets", "task": "sentiment", "position": 0}}  # fmt: skip
    registry.push("seq-a", write_adapter(tmp_path / "a"), method="lora", manifest=manifest)
    html = TestClient(ui_app(registry, api_key=None)).get("/ui/adapters/seq-a").text
    svg = re.search(r'<svg id="lineage".*?</svg>', html, re.S).group(0)
    assert re.findall(r'<a class="lineage-link" href="([^"]+)"', svg) == [
        f"/ui/adapters?base={BASE_A}", "/ui/adapters?tag=sequence-tweets"]  # fmt: skip
    for text in ("base tiny-llama", "data tweets.csv", "imported from peft", "sequence tweets, task sentiment"):
        assert f">{text}</text>" in svg, text
