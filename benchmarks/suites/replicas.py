"""Replicas on Ray Serve: throughput, p99 and adapter hit share of 1 vs 2 replicas, multiplexed vs load-only routing.

`adapterhub serve --replicas N` deployed on a local Ray (`ray.init`, one CPU per replica) with 16 LoRAs over
replicas of 4 slots each (8 slots in all for 2 replicas: not every adapter fits). One client sends the same seeded
requests to each setup: the adapter drawn uniformly from the 16, a short prompt, `max_tokens` = `min_tokens`
(fixed work per request), `concurrency` requests in flight. Three setups, deployed one after the other:

* 1 replica (multiplexed routing has nothing to choose);
* 2 replicas, multiplexed routing (`multiplexed_model_id=name@version`: Ray sends a request to a replica that
  already holds its adapter when one does);
* 2 replicas, load-only routing (no model id: Ray's power-of-two-choices on queue length, the baseline).

Recorded per setup: request latency (each sample one request, so p50/p99 come from the harness's stats),
requests per second over the timed phase, and the share of adapter requests that found their adapter already in
the replica's pool (`adapterhub_routed_requests{adapter_resident}` from the ingress's /metrics, every replica).
What this cannot show on a 2-core machine: 2 replicas each get one core, and the client, the ingress and Ray's
proxy share those cores, so the throughput of 2 vs 1 replica is bounded far below 2x; the hit shares do not
depend on the machine.
"""

from __future__ import annotations

import random
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks import models
from benchmarks.harness import Context

REQUIRES = {"ray": "ray[serve]", "httpx": "httpx"}
DEVICES = ("cpu",)  # replicas are placed by Ray's CPU count here; a GPU run would set num_gpus per replica
ADAPTERS, SLOTS = 16, 4
SETUPS = (("1 replica", 1, True), ("2 replicas, multiplexed", 2, True), ("2 replicas, load-only routing", 2, False))
WORDS = "the movie film was is great good bad very so i love hate this it".split()


def _push_adapters(base, registry, root) -> list[str]:
    """16 rank-8 LoRAs with random non-zero weights (as after training), pushed to the scratch registry."""
    import torch

    from adapterhub import adapters

    options = adapters.make_options("lora", {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["all-linear"]})
    names = []
    for i in range(ADAPTERS):
        torch.manual_seed(i)
        model = adapters.attach(base, "lora", options)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.02)
        saved = adapters.save_adapter(model, root / f"r{i}", adapters.build_manifest(base, "lora", options))
        model.unload()
        names.append(registry.push(f"r{i}", saved, method="lora", base_fingerprint=base.fingerprint_id).name)
    return names


def _routed(url: str, client) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    counts = {"yes": 0.0, "no": 0.0}
    for family in text_string_to_metric_families(client.get(url + "/metrics").text):
        if family.name == "adapterhub_routed_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["adapter_resident"]] += sample.value
    return counts


def _send(client, url: str, jobs: list[tuple[str, str]], tokens: int, concurrency: int) -> tuple[list[float], float]:
    """Latencies (ms) of ``jobs`` sent ``concurrency`` at a time, and the wall seconds they took."""

    def one(job: tuple[str, str]) -> float:
        started = time.perf_counter()
        answer = client.post(url + "/v1/completions", json={"model": job[0], "prompt": job[1], "max_tokens": tokens,
                                                            "min_tokens": tokens, "temperature": 0})  # fmt: skip
        answer.raise_for_status()
        return (time.perf_counter() - started) * 1000.0

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as threads:
        latencies = list(threads.map(one, jobs))
    return latencies, time.perf_counter() - started


def run(ctx: Context) -> None:
    import httpx
    import ray
    from ray import serve

    from adapterhub.base import load_base
    from adapterhub.server import ServerSettings
    from adapterhub.server.ray_serve import APP_NAME, ReplicaSpec, application
    from adapterhub.server.ray_serve.board import STALE_AFTER_S
    from adapterhub_registry import Registry

    path, label = models.model_for(ctx)
    count, tokens, concurrency = (32, 4, 4) if ctx.quick else (192, 16, 8)
    rng = random.Random(ctx.seed)
    ctx.settings.update(model=label, adapters=ADAPTERS, slots_per_replica=SLOTS, requests=count, tokens=tokens,
                        concurrency=concurrency, replica_cpus=1)  # fmt: skip
    with ctx.scratch("replicas") as root:
        registry = Registry(root / "registry")
        names = _push_adapters(load_base(path), registry, root)
        jobs = [(rng.choice(names), " ".join(rng.choices(WORDS, k=6))) for _ in range(count)]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        url, summary = f"http://127.0.0.1:{port}", []
        ray.init(include_dashboard=False, logging_level="warning")
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            with httpx.Client(timeout=300) as client:
                for setup, replicas, multiplexed in SETUPS:
                    spec = ReplicaSpec(base=path, registry_root=registry.root, slots=SLOTS, max_rank=8, replicas=replicas,
                                       multiplexed=multiplexed, settings=ServerSettings(model_name="base", max_new_tokens=64))  # fmt: skip
                    serve.run(application(spec), name=APP_NAME, route_prefix="/")
                    _send(client, url, [(name, "the movie was") for name in names], tokens, concurrency)  # warm-up
                    time.sleep(STALE_AFTER_S)  # the previous setup's reports are gone, this one's are current
                    before = _routed(url, client)
                    latencies, seconds = _send(client, url, jobs, tokens, concurrency)
                    time.sleep(2.0)  # replicas report every second
                    after = _routed(url, client)
                    hits, misses = after["yes"] - before["yes"], after["no"] - before["no"]
                    share = hits / max(1.0, hits + misses)
                    p99 = statistics.quantiles(latencies, n=100)[98]
                    measured = ctx.record("request latency", setup, latencies, what=f"{replicas} replica(s), "
                                          f"{'multiplexed' if multiplexed else 'load-only'} routing",
                                          params={"replicas": replicas}, extra={"requests_per_s": count / seconds, "p99_ms": p99, "hit_share": share})  # fmt: skip
                    summary.append(
                        [
                            setup,
                            round(count / seconds, 2),
                            round(measured.stats.median, 1),
                            round(p99, 1),
                            round(100 * share, 1),
                        ]
                    )
                    serve.delete(APP_NAME)
        finally:
            ray.shutdown()
    ctx.table("Replicas on Ray Serve", ["setup", "requests/s", "latency p50 ms", "latency p99 ms", "adapter already held %"], summary,
              note=f"{count} requests, {concurrency} in flight, {tokens} tokens each, adapters uniform over {ADAPTERS}, "
                   f"{SLOTS} slots per replica")  # fmt: skip
    ctx.note(
        "Each replica reserves one Ray CPU (torch runs one thread there); on this 2-core machine the client, "
        "the ingress and Ray's proxy share the same cores, so 2 replicas cannot reach twice the throughput of 1."
    )
