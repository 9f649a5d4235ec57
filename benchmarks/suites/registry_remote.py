"""Remote registry on S3 (moto on loopback): push, fetch, signing; list and search of 1,000-100,000 names.

Push and fetch of a 20 MB adapter, the cost of signing and verifying, and list and search of 1,000, 10,000 and
100,000 names through the remote's index, each beside the local registry.

What it measures, and what it cannot show here. The S3 server is moto (`python -m moto.server`) in its own process
on 127.0.0.1, so a request costs moto's Python request handling plus loopback, not a network round trip: on AWS
each request adds ~10-50 ms of latency and the upload is bound by bandwidth, neither of which is here. The figures
show the client's own cost (hashing, s3fs, the number of requests each operation makes) and its scaling with the
number of names; on a real store multiply the request counts by its latency.

* push 20 MB — `Remote.push(ref)`: sha256-checked read of the local blob, LISTs of the name's versions and
  tombstones, HEAD of the blob, PUT of the blob, PUT of the index's pending log object, conditional PUT of the
  entry, PUT of the log object done, HEAD of the index pointer; vs `Registry.push(dir)` into the local registry.
  Each call pushes new bytes, so the blob is never skipped. With `--sign`: the same push signed with an EC key
  (remote_signing.py), beside it unsigned.
* fetch 20 MB — `Remote.fetch(ref)` into an empty local registry: resolve (LISTs, GET entry, HEAD tombstone), GET
  blob, sha256 re-check, local push; vs `Registry.pull(ref, dir)`. With trusted keys: the same fetch with the
  signature verified first.
* list / search at N names — `Remote.list()` / `Remote.search("sentiment")` through the real code path: GET the
  index pointer, GET the snapshot (gzip JSON), LIST the log since it, GET its objects (here: a few real pushes
  made after the snapshot). *No copy*: a new `Remote` with its local cache directory removed, as on a machine
  that never saw the remote; *cached*: the same `Remote` again with the remote unchanged (GET pointer + LIST log,
  the parsed snapshot kept in memory). Beside them `Registry.list()` / `Registry.search` on a local SQLite
  index of the same N adapters. The remote's snapshot of N names is written by a bulk writer (the index's own
  encoder, then PUT) rather than by N pushes, which would take ~0.1 s each here; the local index likewise gets
  its rows in one transaction through its own writer.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import Context, Side

REQUIRES = {"moto": "moto[server]", "s3fs": "s3fs", "flask": "moto[server]"}
DEVICES = ("cpu", "cuda")
REMOTE, LOCAL = "S3 remote (moto, loopback)", "local registry"
REMOTE_COLD = "S3 remote, no local copy"
SIGNED = "S3 remote, signed / verified"
CLI_COLD = "CLI process, no local copy"
ADAPTER_MB, QUICK_ADAPTER_MB = 20, 2
SIZES, QUICK_SIZES = (1_000, 10_000, 100_000), (100, 1_000)
LIST_TARGETS_MS = {1_000: 1000.0, 100_000: 3000.0}  # cold, from issue 26; cached: 50 ms
WARM_TARGET_MS = 50.0
QUERY, TOPICS = "sentiment", ("sentiment", "news", "code", "legal", "medical", "chat", "math", "translate")
LOG_PUSHES = 3  # real pushes after the bulk-written snapshot: the log a reader folds in
_AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def _moto_server(log: Path):
    """moto's S3 server in a child process on a free loopback port (its own GIL: the client is measured alone)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(log, "wb") as output:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=output, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start; see {log}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _adapter(directory: Path, megabytes: int, generator) -> Path:
    """A PEFT LoRA directory whose weights are `megabytes` MB of random float32 (new bytes every call)."""
    import json

    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    columns = megabytes * 2**20 // 4 // 16 // 2  # two (16, columns) tensors
    save_file({f"base_model.model.layer.lora_{p}.weight": torch.randn(16, columns, generator=generator) for p in "AB"},
              str(directory / "adapter_model.safetensors"))  # fmt: skip
    (directory / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 16, "target_modules": ["layer"]})
    )
    return directory


def _bulk_rows(count: int) -> list[dict]:
    """The listing fields of `count` one-version adapters (names, topics in the description, a metric; real
    sha256 digests, which do not compress, so the snapshot is as large as a real one)."""
    import hashlib

    return [
        {"name": f"{TOPICS[i % len(TOPICS)]}-{i:06d}", "description": f"{TOPICS[i % len(TOPICS)]} adapter number {i}",
         "metrics": {"accuracy": (i % 100) / 100}, "sha256": hashlib.sha256(str(i).encode()).hexdigest(), "created_at": 1.8e9 + i}
        for i in range(count)
    ]  # fmt: skip


def _bulk_remote(remote, rows: list[dict]) -> None:
    """Write a snapshot of `rows` and point the remote's index at it, as a compaction would (the index's own
    encoder; no entries or blobs: listing never reads them)."""
    import hashlib
    import json

    from adapterhub_registry import remote_index
    from adapterhub_registry.remote_index import IndexState

    state = IndexState(
        {(r["name"], 1): [r["name"], 1, "lora", "fp-bench", r["metrics"], r["created_at"], r["sha256"], 4096,
                          r["description"]] for r in rows},
        {(r["name"], "prod"): (1, 1) for i, r in enumerate(rows) if i % 10 == 0},
    )  # fmt: skip
    data = state.encode("", [])
    snapshot = hashlib.sha256(data).hexdigest()
    remote.store.put(f"{remote_index.SNAPSHOT_PREFIX}{snapshot}.json.gz", data)
    head = {"format": remote_index.INDEX_FORMAT, "snapshot": snapshot, "covers": "", "written_at": time.time()}
    remote.store.put(remote_index.HEAD_KEY, json.dumps(head).encode("utf-8"))


def _bulk_local(registry, rows: list[dict]) -> None:
    """The same adapters in a local registry's index, in one transaction through its own writer (no blobs)."""
    with registry._index.write() as writer:
        for r in rows:
            writer.add_version(name=r["name"], method="lora", base_fingerprint="fp-bench",
                               peft_config_text='{"peft_type": "LORA", "r": 4}', manifest={"description": r["description"]},
                               metrics=r["metrics"], blob_sha256=r["sha256"], size_bytes=4096, created_at=r["created_at"])  # fmt: skip
    for r in rows[::10]:
        registry.tag(f"{r['name']}@1", "prod")


def run(ctx: Context) -> None:
    import boto3
    import torch

    from adapterhub_registry import Registry
    from adapterhub_registry.remote_config import RemoteConfigs

    megabytes = QUICK_ADAPTER_MB if ctx.quick else ADAPTER_MB
    sizes = QUICK_SIZES if ctx.quick else SIZES
    repeats = 3 if ctx.quick else 7
    ctx.settings.update(adapter_mb=megabytes, sizes=list(sizes), s3_server="moto.server, separate process, 127.0.0.1")
    generator = torch.Generator().manual_seed(ctx.seed)
    saved_env = {k: os.environ.get(k) for k in _AWS}
    os.environ.update(_AWS)
    try:
        with ctx.scratch("registry_remote") as root, _moto_server(root / "moto.log") as endpoint:
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
            local = Registry(root / "local")
            RemoteConfigs(local.root).add("origin", "s3://bench/team", endpoint)
            remote = local.remote("origin")
            counter = iter(range(10**6))

            def fresh_dir() -> Path:
                return _adapter(root / "staging" / str(next(counter)), megabytes, generator)

            def fresh_local_ref() -> str:
                directory = fresh_dir()
                ref = local.push("pushed", directory, method="lora").ref
                shutil.rmtree(directory)
                return ref

            params = {"adapter_mb": megabytes}
            _push_and_fetch(ctx, root, endpoint, local, remote, fresh_dir, fresh_local_ref, params, repeats)
            _signing(ctx, root, endpoint, local, fresh_local_ref, params, repeats)
            for count in sizes:
                _listing(ctx, root, endpoint, local, count)
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    ctx.note(
        "moto runs in its own process on loopback: no network latency or bandwidth limit, so the remote "
        "figures are the client's cost plus moto's request handling; on a real S3 add its latency per request."
    )
    ctx.note(
        "A list or search makes 3 requests plus one GET per log object since the snapshot (here "
        f"{LOG_PUSHES}, cached locally once read); cached and unchanged, 2 (GET pointer, LIST log)."
    )


def _push_and_fetch(ctx, root, endpoint, local, remote, fresh_dir, fresh_local_ref, params, repeats) -> None:
    from adapterhub_registry import Registry
    from adapterhub_registry.remote_config import RemoteConfigs

    ctx.compare(
        f"push {params['adapter_mb']} MB",
        Side(REMOTE, "Remote.push(ref): blob PUT, index log PUT x2, conditional entry PUT", remote.push, fresh_local_ref),
        Side(LOCAL, "Registry.push(dir)", lambda d: local.push("local-push", d, method="lora"), fresh_dir,
             lambda d: shutil.rmtree(d)),
        params=params, repeats=repeats, warmup=1,
    )  # fmt: skip
    source = fresh_dir()
    local.push("fetched", source, method="lora")
    remote.push("fetched")
    homes = iter(range(10**6))

    def empty_home():
        home = Registry(root / "homes" / str(next(homes)))
        RemoteConfigs(home.root).add("origin", "s3://bench/team", endpoint)
        return home

    def drop_home(home) -> None:
        home.close()
        shutil.rmtree(home.root)

    pulled = root / "pulled"
    ctx.compare(
        f"fetch {params['adapter_mb']} MB",
        Side(REMOTE, "Remote.fetch(ref) into an empty local registry (sha256 re-checked)",
             lambda home: home.remote("origin").fetch("fetched"), empty_home, drop_home),
        Side(LOCAL, "Registry.pull(ref, dir)", lambda _: local.pull("fetched", pulled),
             lambda: shutil.rmtree(pulled, ignore_errors=True)),
        params=params, repeats=repeats, warmup=1,
    )  # fmt: skip


def _signing(ctx, root, endpoint, local, fresh_local_ref, params, repeats) -> None:
    """The cost of signing a push and of verifying a fetch (remote_signing.py), beside the same unsigned."""
    from adapterhub_registry import Registry
    from adapterhub_registry.keys import generate_key_pair, read_public_key, read_signing_key
    from adapterhub_registry.remote_config import RemoteConfigs

    private, public = generate_key_pair("bench", root / "keys")
    key = read_signing_key(private)
    RemoteConfigs(local.root).add("signed", "s3://bench/signed", endpoint, trusted_keys=(read_public_key(public),))
    RemoteConfigs(local.root).add("unsigned", "s3://bench/unsigned", endpoint)
    signed, unsigned = local.remote("signed"), local.remote("unsigned")
    ctx.compare(
        f"push {params['adapter_mb']} MB, signed",
        Side(SIGNED, "Remote.push(ref, sign=key): model-signing over config, manifest and blob digest",
             lambda ref: signed.push(ref, sign=key), fresh_local_ref),
        Side(REMOTE, "Remote.push(ref) unsigned", unsigned.push, fresh_local_ref),
        params=params, repeats=repeats, warmup=1,
    )  # fmt: skip
    homes = iter(range(10**6))

    def empty_home(remote_name: str, trusted: tuple[str, ...]):
        home = Registry(root / "verify-homes" / str(next(homes)))
        RemoteConfigs(home.root).add(remote_name, f"s3://bench/{remote_name}", endpoint, trusted_keys=trusted)
        return home

    def drop_home(home) -> None:
        home.close()
        shutil.rmtree(home.root)

    ctx.compare(
        f"fetch {params['adapter_mb']} MB, signature verified",
        Side(SIGNED, "Remote.fetch(ref) on a remote with a trusted key: signature checked first",
             lambda home: home.remote("signed").fetch("pushed"),
             lambda: empty_home("signed", (read_public_key(public),)), drop_home),
        Side(REMOTE, "Remote.fetch(ref), no trusted keys", lambda home: home.remote("unsigned").fetch("pushed"),
             lambda: empty_home("unsigned", ()), drop_home),
        params=params, repeats=repeats, warmup=1,
    )  # fmt: skip


def _listing(ctx, root, endpoint, local, count: int) -> None:
    from adapterhub_registry import Registry
    from adapterhub_registry.remote_config import RemoteConfigs

    started = time.perf_counter()
    rows = _bulk_rows(count)
    RemoteConfigs(local.root).add(f"n{count}", f"s3://bench/names-{count}", endpoint)
    writer = local.remote(f"n{count}")
    _bulk_remote(writer, rows)
    staging = root / f"log-{count}"
    for i in range(LOG_PUSHES):
        _push_late(local, writer, staging, i)
    listed = Registry(root / f"listed-{count}")
    _bulk_local(listed, rows)
    ctx.note(
        f"{count:,} names: bulk snapshot + {LOG_PUSHES} pushes + local index took {time.perf_counter() - started:.1f} s."
    )

    def cold_remote():
        reader = local.remote(f"n{count}")
        shutil.rmtree(reader.cache.directory, ignore_errors=True)
        return reader

    warm = local.remote(f"n{count}")
    warm.list()
    params = {"names": count}
    for case, remote_call, local_call, what in (
        ("list", lambda r: r.list(), listed.list, "list()"),
        ("search", lambda r: r.search(QUERY), lambda: listed.search(QUERY), f"search({QUERY!r})"),
    ):
        cold_m, warm_m, _ = ctx.compare(
            case,
            Side(REMOTE_COLD, f"Remote.{what}: new Remote, no local copy: GET pointer + snapshot, LIST + GET log",
                 remote_call, cold_remote),
            Side(REMOTE, f"Remote.{what}: same Remote, remote unchanged: GET pointer + LIST log", lambda: remote_call(warm)),
            Side(LOCAL, f"Registry.{what} (SQLite index)", local_call),
            params=params, repeats=3 if count >= 100_000 else 5, warmup=1,
        )  # fmt: skip
        if count in LIST_TARGETS_MS:
            ctx.check(
                f"Remote.{what} of {count:,} names, no local copy (median)", cold_m.stats.median, LIST_TARGETS_MS[count]
            )
        ctx.check(
            f"Remote.{what} of {count:,} names, cached and unchanged (median)", warm_m.stats.median, WARM_TARGET_MS
        )
    assert len(warm.list()) == len(listed.list()) + LOG_PUSHES == count + LOG_PUSHES
    command = [sys.executable, "-m", "adapterhub.cli", "registry", "--registry", str(local.root), "list", "--remote",
               f"n{count}"]  # fmt: skip
    ctx.time(
        "list, a new CLI process",
        Side(CLI_COLD, "`adapterhub registry list --remote R` in a new process, no local copy: start-up and printing included",
             lambda _: subprocess.run(command, check=True, stdout=subprocess.DEVNULL), cold_remote),
        params=params, repeats=3, warmup=1,
    )  # fmt: skip
    late = itertools.count(LOG_PUSHES)
    ctx.time(
        "compact",
        Side(REMOTE, "Remote.compact(): fold the log into a new snapshot, PUT it, move HEAD by compare-and-swap",
             lambda _: warm.compact(), lambda: _push_late(local, writer, staging, next(late))),
        params=params, repeats=3, warmup=1,
    )  # fmt: skip
    listed.close()


def _push_late(local, writer, staging: Path, i: int) -> None:
    """Push one more small adapter to the remote through the real code path (a log object for readers to fold)."""
    source = staging / str(i)
    source.mkdir(parents=True)
    (source / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    _small_weights(source / "adapter_model.safetensors", i)
    name = f"late-{staging.name}-{i}"
    local.push(name, source, method="lora", manifest={"description": "sentiment, pushed late"})
    writer.push(name)


def _small_weights(path: Path, i: int) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"base_model.model.layer.lora_A.weight": torch.full((4, 16), float(i))}, str(path))
