"""``serve --replicas 2 --remote origin`` the way a cluster runs it: a Ray cluster of two nodes on this machine
(``ray.cluster_utils.Cluster``), one replica per node (each node has one ``adapterhub_replica`` resource), each node
with its own ``ADAPTERHUB_HOME`` and the ingress with one of its own, adapters only on an S3 remote (moto's server
on loopback). Every answer equals the adapter served alone, by the remote's own versions and tags; each node's
registry holds exactly what its replica served, fetched from the remote; the ingress's home stays empty. Without
Ray: the ingress's and the replica's halves of the mapping, and the errors that name the remote."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from test_openai_server import push_adapter  # noqa: E402
from test_registry_remote_support import AWS_ENV, add_remote, moto_endpoint  # noqa: E402, F401
from test_registry_support import write_adapter  # noqa: E402

from adapterhub.base import load_base  # noqa: E402
from adapterhub.runtime import AdapterPool, SamplingParams, generate  # noqa: E402
from adapterhub.server import ServerSettings  # noqa: E402
from adapterhub.server.http_errors import HTTPError  # noqa: E402
from adapterhub.server.openai_routes import resolve_model  # noqa: E402
from adapterhub.server.ray_serve import APP_NAME, ReplicaSpec, application  # noqa: E402
from adapterhub.server.ray_serve.board import board  # noqa: E402
from adapterhub.server.ray_serve.ingress import Edge  # noqa: E402
from adapterhub.server.remote_refs import FetchedKeys, RemoteKeys  # noqa: E402
from adapterhub.server.settings import ServeSpec  # noqa: E402
from adapterhub_registry import Registry  # noqa: E402
from adapterhub_registry.remote import provenance  # noqa: E402
from adapterhub_registry.remote_config import RemoteConfig, RemoteConfigs  # noqa: E402

# (what a client sends, the remote version it names): tone0 has two versions on the remote, its tag on the older
REFS = {"tone0": "tone0@2", "tone0@1": "tone0@1", "tone0:prod": "tone0@1", "tone1": "tone1@1", "tone2": "tone2@1"}
PROMPTS = ("the movie was", "they drive fast cars")
TOKENS = 4
KEY = "sk-remote-replicas"
RAY_LEARNS_S = 0.5  # Ray Serve's model-id push (every 0.1 s) through the controller to the ingress's router
SMALL_STORE = 100 * 1024 * 1024  # Ray's object store per node: nothing big travels through it here


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _remote_with_adapters(tiny_llama, root, endpoint: str) -> tuple[Registry, dict[tuple[str, str], str]]:
    """A training machine's registry that pushed every adapter to a new bucket's remote ``origin``, and each
    (prompt, remote version)'s greedy answer served alone there."""
    import boto3

    bucket = f"adapters-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    trainer = Registry(root / "trainer-home" / "registry")
    add_remote(trainer, f"s3://{bucket}/team", endpoint)
    base = load_base(tiny_llama)
    for seed, name in enumerate(("tone0", "tone0", "tone1", "tone2"), start=1):
        local, _ = push_adapter(base, trainer, name, root / f"made-{seed}", seed)
        pushed = trainer.remote("origin").push(local.ref, tags=["prod"] if local.ref == "tone0@1" else ())
        assert pushed.ref == local.ref  # the remote numbers them as the trainer did: references by the same keys
    pool = AdapterPool(base, slots=2, max_rank=4, registry=trainer)
    alone = SamplingParams(max_tokens=TOKENS, min_tokens=TOKENS, temperature=0)  # what each request asks
    references = {(p, v): generate(pool, [p], [v], alone)[0].text for p in PROMPTS for v in set(REFS.values())}
    pool.close()
    return trainer, references


@pytest.fixture(scope="module")
def cluster(tiny_llama, moto_endpoint, tmp_path_factory):  # noqa: F811 - moto_endpoint is the imported fixture
    root = tmp_path_factory.mktemp("remote-replicas")
    homes = {node: root / f"home-{node}" for node in ("a", "b", "ingress")}
    with pytest.MonkeyPatch.context() as env:
        for key, value in AWS_ENV.items():
            env.setenv(key, value)
        env.setenv("ADAPTERHUB_HOME", str(root / "trainer-home"))  # the launcher's: where `remote add` was run
        trainer, references = _remote_with_adapters(tiny_llama, root, moto_endpoint)
        settings = ServerSettings(max_input_tokens=32, max_new_tokens=16, model_name="tiny", api_key=KEY)
        spec = ReplicaSpec.of(
            ServeSpec(base=str(tiny_llama), remote="origin", settings=settings, slots=4, max_rank=4), 2
        )
        spec = dataclasses.replace(spec, reply_timeout_s=20.0)
        nodes = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "resources": {"adapterhub_replica": 1}, "include_dashboard": False,
            "object_store_memory": SMALL_STORE, "env_vars": {**AWS_ENV, "ADAPTERHUB_HOME": str(homes["a"])}})  # fmt: skip
        nodes.add_node(num_cpus=1, resources={"adapterhub_replica": 1}, object_store_memory=SMALL_STORE,
                       env_vars={**AWS_ENV, "ADAPTERHUB_HOME": str(homes["b"])})  # fmt: skip
    port = _free_port()
    try:
        # log_to_driver=False: replica logs would land in the captured stderr of tests that count its lines
        ray.init(address=nodes.address, logging_level="warning", log_to_driver=False)
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        one_per_node = {"resources": {"adapterhub_replica": 1}}
        own_home = {"runtime_env": {"env_vars": {"ADAPTERHUB_HOME": str(homes["ingress"])}}}
        serve.run(application(spec, replica_options=one_per_node, ingress_options=own_home), name=APP_NAME,
                  route_prefix="/")  # fmt: skip
        yield f"http://127.0.0.1:{port}", references, homes
    finally:
        ray.shutdown()
        nodes.shutdown()


def _residents(until, within_s: float = 10.0) -> list[list[str]]:
    """The adapters each replica's pool holds (local keys), once ``until`` holds: reports come every second."""
    deadline = time.monotonic() + within_s
    while True:
        residents = sorted(sorted(report.resident) for report in ray.get(board().live.remote()))
        if until(residents) or time.monotonic() > deadline:
            return residents
        time.sleep(0.2)


def _complete(client, model: str, prompt: str) -> str:
    done = client.completions.create(
        model=model, prompt=prompt, max_tokens=TOKENS, temperature=0, extra_body={"min_tokens": TOKENS}
    )
    return done.choices[0].text


@pytest.mark.integration
def test_two_nodes_serve_the_remotes_versions_each_from_its_own_registry(cluster):
    url, references, homes = cluster
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    for ref, version in REFS.items():  # one each first, so Ray learns where each adapter lives before the burst
        assert _complete(client, ref, PROMPTS[0]) == references[(PROMPTS[0], version)], ref
        time.sleep(RAY_LEARNS_S)
    asked = [(ref, PROMPTS[i % 2]) for i, ref in enumerate(list(REFS) * 3)]
    with ThreadPoolExecutor(6) as threads:
        answers = list(threads.map(lambda job: _complete(client, *job), asked))
    assert answers == [references[(prompt, REFS[ref])] for ref, prompt in asked]
    stream = client.completions.create(model="tone0:prod", prompt=PROMPTS[1], max_tokens=TOKENS, temperature=0,
                                       stream=True, extra_body={"min_tokens": TOKENS})  # fmt: skip
    assert "".join(c.choices[0].text for c in stream if c.choices) == references[(PROMPTS[1], "tone0@1")]

    # each node's registry holds what its replica serves, fetched from the remote, and nothing else
    held = {node: Registry(homes[node] / "registry").list(all_versions=True) for node in ("a", "b")}
    fetched = {node: {provenance(record)["ref"] for record in records} for node, records in held.items()}
    assert all(fetched.values()), fetched  # both replicas served
    assert sorted(fetched["a"] | fetched["b"]) == sorted(set(REFS.values()))
    assert not fetched["a"] & fetched["b"], fetched  # each remote version fetched once, onto one node
    on_disk = sorted(sorted(r.ref for r in held[node]) for node in held)
    assert _residents(until=lambda residents: residents == on_disk) == on_disk  # and its pool holds all of it
    assert not homes["ingress"].exists()  # the ingress resolved every ref on the remote and wrote nothing


@pytest.mark.integration
def test_a_ref_the_remote_does_not_know_is_a_404_naming_the_remote(cluster):
    client = openai.OpenAI(base_url=cluster[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="tone9", prompt="the movie", max_tokens=2)
    assert missing.value.body["code"] == "model_not_found" and "remote origin (s3://" in missing.value.body["message"]
    assert _complete(client, "tiny", PROMPTS[0])  # the base's name is served, no remote asked


@pytest.fixture
def remote(tmp_path, moto_endpoint, monkeypatch) -> Registry:  # noqa: F811 - moto_endpoint is the imported fixture
    """A training machine's registry with a remote ``origin`` on a new bucket, AWS settings for moto."""
    import boto3

    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    bucket = f"adapters-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    trainer = Registry(tmp_path / "trainer")
    add_remote(trainer, f"s3://{bucket}/team", moto_endpoint)
    return trainer


def test_the_ingress_resolves_refs_on_the_remote_alone_and_sees_a_moved_tag(remote, tmp_path, adapterhub_home):
    for seed in (1, 2):
        remote.push("style", write_adapter(tmp_path / f"style-{seed}", seed=seed), method="lora")
        remote.remote("origin").push(f"style@{seed}", tags=["prod"] if seed == 1 else ())
    keys = RemoteKeys(RemoteConfigs(remote.root).get("origin"), ttl=0)
    assert [keys.resolve(ref).ref for ref in ("style", "style@1", "style:prod")] == ["style@2", "style@1", "style@1"]
    remote.remote("origin").tag("style@2", "prod")
    assert keys.resolve("style:prod").ref == "style@2"
    assert not adapterhub_home.exists()  # no local registry was opened


def test_a_replica_maps_the_remotes_version_to_its_own_registrys_and_fetches_it_once(remote, tmp_path):
    remote.push("style", write_adapter(tmp_path / "style", seed=1), method="lora")
    remote.remote("origin").push("style@1")
    node = Registry(tmp_path / "node")
    node.push("style", write_adapter(tmp_path / "local-style", seed=7), method="lora")  # this node's own style@1
    config = RemoteConfigs(remote.root).get("origin")
    assert FetchedKeys.open(node, config).local_key("style@1") == "style@2"
    assert FetchedKeys.open(node, config).local_key("style@1") == "style@2"  # a restarted replica: no new copy
    assert [r.ref for r in node.list(all_versions=True)] == ["style@1", "style@2"]
    assert node.resolve("style@2").blob_sha256 == remote.resolve("style@1").blob_sha256


def test_the_ingress_answers_404_for_an_unknown_ref_and_503_for_a_remote_it_cannot_reach(remote, monkeypatch):
    settings = ServerSettings(model_name="tiny")
    edge = Edge(settings, remote=RemoteKeys(RemoteConfigs(remote.root).get("origin")))
    with pytest.raises(HTTPError) as unknown:
        asyncio.run(resolve_model(edge, "nope"))
    assert unknown.value.status == 404 and "remote origin (s3://" in unknown.value.detail
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries of a refused connection take ~8 s otherwise
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    edge = Edge(settings, remote=RemoteKeys(RemoteConfig("origin", "s3://gone/team", dead)))
    with pytest.raises(HTTPError) as unreachable:
        asyncio.run(resolve_model(edge, "style"))
    assert (
        unreachable.value.status == 503
        and "remote origin (s3://gone/team) cannot be reached" in unreachable.value.detail
    )
    assert asyncio.run(resolve_model(edge, "tiny")) == (None, "base")  # the base needs no remote


def test_serve_with_replicas_names_a_remote_the_launcher_does_not_have(tiny_llama, tmp_path, capsys):
    from adapterhub.cli import main

    assert (
        main(["serve", "--base", str(tiny_llama), "--registry", str(tmp_path), "--replicas", "2", "--remote", "nope"])
        == 1
    )
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "registry remote add nope" in err, err
    assert os.listdir(tmp_path) == []  # refused before anything was written


def test_one_server_serves_its_local_copy_when_its_remote_cannot_be_reached(remote, tmp_path, monkeypatch):
    from adapterhub.server.remote_refs import RemoteRefs
    from adapterhub_registry.bundled_stores import bundled_stores
    from adapterhub_registry.remote import Remote
    from adapterhub_registry.remote_store import open_store

    remote.push("style", write_adapter(tmp_path / "style", seed=1), method="lora")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = RemoteConfig("origin", "s3://gone/team", f"http://127.0.0.1:{closed.getsockname()[1]}")
    refs = RemoteRefs(remote, Remote(remote, dead, open_store(dead.url, dead.endpoint_url, bundled_stores())))
    assert refs.resolve("style").ref == "style@1"  # logged, and served from here


def test_the_launcher_pins_load_refs_to_the_remotes_versions_and_reads_their_model_task(remote, tiny_llama, tmp_path):
    from adapterhub.server.ray_serve.launch import replica_spec

    push_adapter(load_base(tiny_llama), remote, "tone", tmp_path, 1)
    remote.remote("origin").push("tone@1", tags=["prod"])
    given = ServeSpec(base=str(tiny_llama), registry_root=remote.root, remote="origin", preload=("tone:prod",))
    spec = replica_spec(given, 2)
    assert spec.preload == ("tone@1",) and spec.model_task == "causal-lm"  # the remote's version, its manifest's task
    assert spec.remote_config == RemoteConfigs(remote.root).get("origin") and spec.registry_root == remote.root


def test_a_replica_refuses_what_the_launchers_trusted_keys_did_not_sign_and_stores_nothing(remote, tmp_path):
    from adapterhub.server.remote_refs import remote_http_error
    from adapterhub_registry import RegistryError
    from adapterhub_registry.keys import generate_key_pair, read_public_key, read_signing_key

    private, public = generate_key_pair("alice", tmp_path / "keys")
    for seed, name in enumerate(("good", "forged"), start=1):
        remote.push(name, write_adapter(tmp_path / name, seed=seed), method="lora")
    remote.remote("origin").push("good", sign=read_signing_key(private))
    remote.remote("origin").push("forged")  # unsigned
    trusting = dataclasses.replace(RemoteConfigs(remote.root).get("origin"), trusted_keys=(read_public_key(public),))
    node = Registry(tmp_path / "node")  # no `remote add` here: the trust travels in the launcher's configuration
    keys = FetchedKeys.open(node, trusting)
    assert keys.local_key("good@1") == "good@1"
    with pytest.raises(RegistryError) as refused:
        keys.local_key("forged@1")
    answer = remote_http_error(refused.value, "forged@1", trusting)
    assert answer.status == 502 and "forged@1" in answer.detail and "not signed" in answer.detail, answer.detail
    assert [r.ref for r in node.list(all_versions=True)] == ["good@1"]
