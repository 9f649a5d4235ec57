"""The pages `adapterhub serve` adds at /ui, on a tiny Llama through FastAPI's TestClient: the serving view shows
the pool and the per-adapter figures /metrics has after a request; the playground's short-lived token is a bearer
key of the API (a made-up one is not); adapters load and unload from the page only with a session and its CSRF
token; with an API key the pages, like the API, want it: a read without a session goes to sign in first and comes
back."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from test_openai_server import push_adapter

from adapterhub.base import load_base
from adapterhub.runtime import AdapterPool
from adapterhub.server import ServerSettings, create_app
from adapterhub_registry import Registry

KEY = "sk-serve-ui"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-ui")
    registry = Registry(root / "registry")
    base = load_base(tiny_llama)
    push_adapter(base, registry, "a", root, 1)
    push_adapter(base, registry, "b", root, 2)
    pool = AdapterPool(base, slots=2, max_rank=4, registry=registry)
    app = create_app(pool, ServerSettings(max_input_tokens=64, max_new_tokens=50, model_name="tiny", api_key=KEY))
    with TestClient(app) as client:
        yield client
    pool.close()


def _live(client: TestClient) -> str:
    answer = client.get("/ui/serving/live")
    assert answer.status_code == 200
    return answer.text


def _row(html: str, adapter: str) -> dict[str, str]:
    row = re.search(rf'<tr data-adapter="{adapter}">(.*?)</tr>', html, re.S).group(1)
    return dict(re.findall(r'<td class="(\w+)">([^<]*)</td>', row))


def _signed_in(client: TestClient) -> str:
    assert client.post("/ui/login", data={"key": KEY}, follow_redirects=False).status_code == 303
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/serving").text).group(1)


def test_with_an_api_key_a_page_is_read_after_signing_in_and_comes_back_to_it(server):
    server.cookies.clear()
    assert server.get("/v1/models").status_code == 401
    for path in ("/ui/serving", "/ui/serving/live", "/ui/adapters?q=a", "/ui/playground"):
        anonymous = server.get(path, follow_redirects=False)
        assert anonymous.status_code == 303, path
        assert anonymous.headers["location"].startswith("/ui/login?next=%2Fui%2F"), path
    login = server.get("/ui/login?next=/ui/serving")
    assert login.status_code == 200 and 'name="next" value="/ui/serving"' in login.text
    back = server.post("/ui/login", data={"key": KEY, "next": "/ui/serving"}, follow_redirects=False)
    assert back.status_code == 303 and back.headers["location"] == "/ui/serving"
    page = server.get("/ui/serving")
    assert page.status_code == 200
    for element in ('id="slots"', 'id="host-cache"', 'id="queue-depth"', 'id="running"', 'id="per-adapter"',
                    'hx-get="/ui/serving/live" hx-trigger="every 1s"'):  # fmt: skip
        assert element in page.text
    elsewhere = server.post("/ui/login", data={"key": KEY, "next": "//evil.example/ui/x"}, follow_redirects=False)
    assert elsewhere.headers["location"] == "/ui/adapters"  # never sent to another host


def test_a_page_asked_for_without_a_session_refuses_a_change_instead_of_redirecting(server):
    server.cookies.clear()
    refused = server.post("/ui/serving/load", data={"ref": "b", "csrf": "x"}, follow_redirects=False)
    assert refused.status_code == 403


def test_the_live_view_counts_a_request_as_metrics_does(server):
    _signed_in(server)
    before = _row(_live(server), "a")["requests"] if 'data-adapter="a"' in _live(server) else "0"
    done = server.post("/v1/completions", headers=AUTH,
                       json={"model": "a", "prompt": "the movie was", "max_tokens": 5, "temperature": 0,
                             "min_tokens": 5})  # fmt: skip
    assert done.status_code == 200
    html = _live(server)
    row = _row(html, "a")
    assert int(row["requests"]) == int(before) + 1 and int(row["tokens"]) >= 5 and row["ttft"].endswith(" ms")
    metrics = server.get("/metrics", headers=AUTH).text
    assert f'adapterhub_adapter_requests_total{{adapter="a"}} {row["requests"]}.0' in metrics
    assert re.search(r'<tr data-adapter="a@1"><td>\d</td><td>a@1</td>', html)  # in a slot now


def test_the_playground_token_is_a_short_lived_bearer_key(server):
    server.cookies.clear()  # one client throughout: the engine runs on its event loop
    assert server.get("/ui/playground", follow_redirects=False).status_code == 303  # no token without a session
    _signed_in(server)
    page = server.get("/ui/playground").text
    token = re.search(r'data-token="(ui-[^"]+)"', page).group(1)
    options = re.findall(r'<select id="adapter-a">(.*?)</select>', page, re.S)[0]
    assert '<option value="tiny">' in options and '<option value="a">' in options and '<option value="b">' in options
    body = {"model": "a", "prompt": "the movie was", "max_tokens": 3, "temperature": 0, "stream": True}
    server.cookies.clear()
    streamed = server.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {token}"})
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    forged = server.post("/v1/completions", json=body, headers={"Authorization": "Bearer ui-made-up"})
    assert forged.status_code == 401


def test_adapters_load_and_unload_from_the_page_with_a_session_only(server):
    server.cookies.clear()
    refused = server.post("/ui/serving/load", data={"ref": "b", "csrf": "x"})
    assert refused.status_code == 403 and "sign in first" in refused.text
    csrf = _signed_in(server)
    assert server.post("/ui/serving/load", data={"ref": "b"}).status_code == 403
    loaded = server.post("/ui/serving/load", data={"ref": "b", "csrf": csrf}, follow_redirects=False)
    assert loaded.status_code == 303 and 'data-adapter="b@1"' in _live(server)
    assert (
        '<input type="hidden" name="ref" value="b@1"><button type="submit">Unload</button>'
        in server.get("/ui/serving").text
    )
    missing = server.post("/ui/serving/load", data={"ref": "nothing", "csrf": csrf})
    assert missing.status_code == 404 and "nothing" in missing.text
    server.post("/ui/serving/unload", data={"ref": "b@1", "csrf": csrf})
    assert 'data-adapter="b@1"' not in _live(server)
