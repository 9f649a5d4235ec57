"""``adapterhub serve --replicas 2`` on a local Ray (2 CPUs, no dashboard): two replicas of a tiny Llama behind
the ingress, driven by the official ``openai`` client through Ray Serve's HTTP proxy on loopback. 40 requests over
6 adapters each equal the adapter served alone (a stream too); multiplexed routing keeps each adapter on one
replica; /metrics covers both replicas; the ingress checks the key and the model; a replica killed with SIGKILL
mid-request ends its stream with an error saying to retry, its unstreamed request is sent again and answered, and
Ray replaces it. Without Ray: merging the replicas' metrics, and what `serve --replicas` refuses."""

from __future__ import annotations

import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402
from test_openai_server import push_adapter  # noqa: E402

from adapterhub.base import load_base  # noqa: E402
from adapterhub.runtime import AdapterPool, GenerationSettings, generate  # noqa: E402
from adapterhub.server import ServerSettings  # noqa: E402
from adapterhub.server.ray_serve import APP_NAME, ReplicaSpec, application  # noqa: E402
from adapterhub.server.ray_serve.board import board  # noqa: E402
from adapterhub_registry import Registry  # noqa: E402

ADAPTERS = [f"style{i}" for i in range(6)]
PROMPTS = ("the movie was", "i love this film", "they drive fast cars")
TOKENS = 4
KEY = "sk-ray-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
RAY_LEARNS_S = 0.5  # Ray Serve's model-id push (every 0.1 s) and the controller's long poll to the router


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _reports(until=lambda reports: len(reports) == 2, within_s: float = 30.0):
    """The board's live reports, once ``until(reports)`` holds (they arrive every second, a step behind)."""
    deadline = time.monotonic() + within_s
    while True:
        reports = ray.get(board().live.remote())
        if until(reports) or time.monotonic() > deadline:
            return reports
        time.sleep(0.2)


def _holders(reports) -> dict[str, list[str]]:
    """adapter -> the replicas whose pool holds it."""
    return {adapter: [r.replica for r in reports if f"{adapter}@1" in r.resident] for adapter in ADAPTERS}


@pytest.fixture(scope="module")
def fleet(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("replicas")
    registry = Registry(root / "registry")
    base = load_base(tiny_llama)
    for seed, name in enumerate(ADAPTERS, start=1):
        push_adapter(base, registry, name, root, seed)
    pool = AdapterPool(base, slots=2, max_rank=4, registry=registry)
    alone = GenerationSettings(max_new_tokens=TOKENS, min_new_tokens=TOKENS)
    references = {(p, a): generate(pool, [p], [f"{a}@1"], alone)[0].text for p in PROMPTS for a in ADAPTERS}
    pool.close()
    settings = ServerSettings(max_input_tokens=32, max_new_tokens=120, model_name="tiny", api_key=KEY)
    spec = ReplicaSpec(base=str(tiny_llama), registry_root=registry.root, settings=settings, slots=4, max_rank=4,
                       replicas=2, reply_timeout_s=20.0)  # fmt: skip
    port = _free_port()
    # log_to_driver=False: replica logs would land in the captured stderr of tests that count its lines
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(spec), name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}", references
    finally:
        ray.shutdown()  # stops Serve with the local cluster (serve.shutdown() first only adds seconds)


@pytest.fixture(scope="module")
def client(fleet):
    return openai.OpenAI(base_url=fleet[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _complete(client, adapter: str, prompt: str) -> str:
    done = client.completions.create(
        model=adapter, prompt=prompt, max_tokens=TOKENS, temperature=0, extra_body={"min_tokens": TOKENS}
    )
    return done.choices[0].text


@pytest.mark.integration
def test_forty_requests_over_six_adapters_each_equal_the_adapter_served_alone(fleet, client):
    _, references = fleet
    for adapter in ADAPTERS:  # one each first, so Ray learns where each adapter lives before the burst
        assert _complete(client, adapter, PROMPTS[0]) == references[(PROMPTS[0], adapter)]
        # Ray learns it late: a replica pushes its model ids every 0.1 s, through the controller to the ingress's
        # router. Sent at once, the next new adapter sees both replicas with no models (5 of 6 on one: an eviction),
        # and the burst finds the adapters loaded last unknown and may load them on the other replica too.
        time.sleep(RAY_LEARNS_S)
    asked = [(ADAPTERS[i % 6], PROMPTS[i % 3]) for i in range(34)]
    with ThreadPoolExecutor(8) as threads:
        answers = list(threads.map(lambda job: _complete(client, *job), asked))
    assert answers == [references[(prompt, adapter)] for adapter, prompt in asked]
    stream = client.completions.create(model="style2", prompt=PROMPTS[1], max_tokens=TOKENS, temperature=0, stream=True,
                                       extra_body={"min_tokens": TOKENS})  # fmt: skip
    assert "".join(c.choices[0].text for c in stream if c.choices) == references[(PROMPTS[1], "style2")]


@pytest.mark.integration
def test_multiplexed_routing_keeps_each_adapter_on_the_replica_that_holds_it(fleet, client):
    reports = _reports(lambda reports: len(reports) == 2 and all(_holders(reports).values()))
    holders = _holders(reports)
    assert all(len(replicas) == 1 for replicas in holders.values()), holders
    assert {replica for replicas in holders.values() for replica in replicas} == {r.replica for r in reports}
    deadline, routed = time.monotonic() + 10, _routed(fleet[0])
    while sum(routed.values()) < 41 and time.monotonic() < deadline:  # /metrics is what replicas reported <= 1 s ago
        time.sleep(0.2)
        routed = _routed(fleet[0])
    assert routed == {"no": len(ADAPTERS), "yes": 41 - len(ADAPTERS)}  # each adapter fetched once, on one replica


def _routed(url: str) -> dict[str, float]:
    """Requests for an adapter routed to a replica that held it ("yes") or had to load it ("no"), all replicas."""
    routed = {"yes": 0.0, "no": 0.0}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", headers=AUTH).text):
        if family.name == "adapterhub_routed_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    routed[sample.labels["adapter_resident"]] += sample.value
    return routed


@pytest.mark.integration
def test_the_ingress_checks_the_key_and_the_model_and_refuses_per_server_loads(fleet, client):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=fleet[0] + "/v1", api_key="sk-wrong", max_retries=0).completions.create(
            model="style0", prompt="the"
        )
    assert httpx.get(fleet[0] + "/metrics").status_code == 401
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="nope", prompt="the movie", max_tokens=2)
    assert missing.value.body["code"] == "model_not_found"
    loading = httpx.post(
        fleet[0] + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "style0"}, headers=AUTH
    )
    assert loading.status_code == 501 and "registry ref" in loading.json()["error"]["message"]
    assert {"tiny", *ADAPTERS} <= {m.id for m in client.models.list().data}  # forwarded to a replica


@pytest.mark.integration
def test_metrics_cover_every_replica_with_its_label(fleet):
    reports = _reports()
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(fleet[0] + "/metrics", headers=AUTH).text)}
    served = {}  # replica -> adapter requests it served
    for sample in families["adapterhub_adapter_requests"].samples:
        served[sample.labels["replica"]] = served.get(
            sample.labels["replica"], 0
        ) + sample.value * sample.name.endswith("_total")
    resident = {s.labels["replica"]: s.value for s in families["adapterhub_adapters_resident"].samples}
    assert set(served) == set(resident) == {r.replica for r in reports}
    assert all(count > 0 for count in served.values()) and sum(resident.values()) == len(ADAPTERS)


@pytest.mark.integration
def test_a_killed_replica_is_replaced_its_stream_says_to_retry_and_its_whole_answer_is_sent_again(fleet, client):
    _, references = fleet
    before = _reports()
    victim = next(r for r in before if "style0@1" in r.resident)  # where multiplexed routing sends style0
    whole = ThreadPoolExecutor(1).submit(client.completions.create, model="style0", prompt=PROMPTS[1], max_tokens=110,
                                         temperature=0, extra_body={"min_tokens": 110})  # fmt: skip
    stream = client.completions.create(model="style0", prompt=PROMPTS[0], max_tokens=110, temperature=0, stream=True,
                                       extra_body={"min_tokens": 110})  # fmt: skip
    chunks = iter(stream)
    next(chunks)
    os.kill(victim.pid, signal.SIGKILL)
    with pytest.raises(openai.APIError, match="retry the request"):
        list(chunks)
    assert whole.result(timeout=60).usage.completion_tokens == 110  # in flight on the victim too: sent again
    for adapter in ADAPTERS:  # served by the survivor (or the replacement) at once: the ingress re-sends on a loss
        assert _complete(client, adapter, PROMPTS[2]) == references[(PROMPTS[2], adapter)]
    assert _replacing(within_s=30) == 2  # Ray has started a replacement (waiting for it to load adds ~15 s here)


def _replacing(within_s: float) -> int:
    """Replicas of the deployment running or starting, once Ray has noticed the kill and started a new one."""
    deadline = time.monotonic() + within_s
    while True:
        states = serve.status().applications[APP_NAME].deployments["replica"].replica_states
        if states.get("STARTING", 0) >= 1 or time.monotonic() > deadline:
            return states.get("RUNNING", 0) + states.get("STARTING", 0)
        time.sleep(0.2)


def test_merged_metrics_keep_each_family_once_and_label_every_sample_with_its_replica():
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    from adapterhub.server.ray_serve.board import merged_exposition

    texts = {}
    for replica, count in (("r1", 3), ("r2", 5)):
        registry = CollectorRegistry()
        Counter("adapterhub_requests", "Requests.", ["endpoint"], registry=registry).labels("/v1/completions").inc(
            count
        )
        texts[replica] = generate_latest(registry).decode()
    merged = merged_exposition(texts).decode()
    assert merged.count("# TYPE adapterhub_requests_total counter") == 1
    samples = {
        (s.labels["replica"], s.value)
        for f in text_string_to_metric_families(merged)
        for s in f.samples
        if s.name.endswith("_total")
    }
    assert samples == {("r1", 3.0), ("r2", 5.0)}


@pytest.mark.parametrize(("options", "named"), [(["--replicas", "1"], "--replicas"), (["--replicas", "2", "--router", "seq"], "--router"),
                                                (["--replicas", "2", "--allow-lora-dir", "."], "--allow-lora-dir")])  # fmt: skip
def test_serve_refuses_what_replicas_cannot_serve_in_one_line(options, named, tiny_llama, tmp_path, capsys):
    from adapterhub.cli import main

    assert main(["serve", "--base", str(tiny_llama), "--registry", str(tmp_path), *options]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and named in err, err
