"""`adapterhub serve` on a real loopback socket under many concurrent clients sending good and bad requests:
every request gets an answer, bad input a 4xx, a damaged registry entry (the server's fault) a 500 and nothing
else a 5xx, no request fails another one batched with it, and the server stays up.

The per-request 4xx answers themselves (malformed JSON, unknown adapter, oversized input, wrong base) are
in test_server.py; here they arrive together, over HTTP, with a damaged adapter among them.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from live_server import LiveServer
from test_runtime import push_random_adapter

from adapterhub.base import load_base
from adapterhub.runtime import AdapterPool
from adapterhub.server import ServerSettings, create_app
from adapterhub_registry import Registry

pytestmark = pytest.mark.integration  # uvicorn on a loopback socket
CLIENTS = 12
REQUESTS = 72


@pytest.fixture
def live_server(tiny_llama, tmp_path):
    """Uvicorn serving tiny_llama with adapters `a`, `b` and a damaged `broken`, on a free loopback port."""
    base = load_base(tiny_llama)
    push_random_adapter(base, "a", {"r": 4}, tmp_path, seed=1)
    push_random_adapter(base, "b", {"r": 2}, tmp_path, seed=2)
    broken = push_random_adapter(base, "broken", {"r": 2}, tmp_path, seed=3)
    blob = Registry().root / "blobs" / "sha256" / broken.blob_sha256
    blob.write_bytes(blob.read_bytes()[:-4])
    pool = AdapterPool(base, slots=2, max_rank=4)
    settings = ServerSettings(
        max_batch_size=8, max_wait_ms=20, max_input_tokens=16, max_new_tokens=8, max_body_bytes=64 << 10
    )
    server = LiveServer(create_app(pool, settings))
    yield server.url
    server.stop()


# (what is sent, the statuses it may get)
KINDS = {
    "generate": (
        lambda r: {"json": {"prompt": "the movie was", "adapter": r.choice(["a", "b", None]), "max_new_tokens": 3}},
        {200},
    ),
    "malformed json": (
        lambda r: {"content": b'{"prompt": "the', "headers": {"content-type": "application/json"}},
        {422},
    ),
    "not utf-8": (
        lambda r: {"content": b'{"prompt": "\xff\xfe"}', "headers": {"content-type": "application/json"}},
        {400, 422},
    ),
    "deeply nested": (
        lambda r: {
            "content": b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            "headers": {"content-type": "application/json"},
        },
        {400, 422},
    ),
    "unknown adapter": (lambda r: {"json": {"prompt": "the movie", "adapter": "nope"}}, {404}),
    "hostile adapter name": (lambda r: {"json": {"prompt": "the movie", "adapter": "../../etc/passwd"}}, {400}),
    "damaged adapter": (lambda r: {"json": {"prompt": "the movie", "adapter": "broken"}}, {500}),
    "too many tokens": (lambda r: {"json": {"prompt": " ".join(["the"] * 50)}}, {413}),
    "body over the limit": (
        lambda r: {"content": b"x" * (128 << 10), "headers": {"content-type": "application/json"}},
        {413},
    ),
}


def test_many_concurrent_clients_get_an_answer_each_and_bad_input_never_breaks_the_server(live_server):
    rng = random.Random(0)
    plan = [rng.choice(list(KINDS)) for _ in range(REQUESTS)]
    plan[: len(KINDS)] = list(KINDS)  # every kind at least once

    def send(kind: str) -> tuple[str, int | str]:
        make, _ = KINDS[kind]
        try:
            with httpx.Client(base_url=live_server, timeout=120) as client:
                return kind, client.post("/generate", **make(random.Random(kind))).status_code
        except httpx.HTTPError as exc:  # a lost request: reset, timeout, refused
            return kind, f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(CLIENTS) as threads:
        answers = list(threads.map(send, plan))
    unexpected = [(kind, status) for kind, status in answers if status not in KINDS[kind][1]]
    assert unexpected == [], unexpected
    with httpx.Client(base_url=live_server, timeout=60) as client:
        assert client.get("/health").json()["status"] == "ok"
        assert (
            client.post("/generate", json={"prompt": "still", "adapter": "a", "max_new_tokens": 2}).status_code == 200
        )
        served = sum(float(line.split()[-1]) for line in client.get("/metrics").text.splitlines()
                     if line.startswith('adapterhub_requests_total{endpoint="/generate"'))  # fmt: skip
    assert served == REQUESTS + 1  # every request was seen and answered, none lost


def test_a_chunked_body_over_the_limit_is_refused_too(live_server):
    def chunks():  # no Content-Length header: the size is only known while reading
        yield b'{"prompt": "'
        for _ in range(64):
            yield b"x" * 4096
        yield b'"}'

    with httpx.Client(base_url=live_server, timeout=120) as client:
        answer = client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
        assert answer.status_code == 413
        assert client.get("/health").json()["status"] == "ok"
