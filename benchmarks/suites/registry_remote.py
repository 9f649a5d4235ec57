"""Remote registry on S3 (moto on loopback): push and fetch of a 20 MB adapter vs the local registry; list of 1,000.

What it measures, and what it cannot show here. The S3 server is moto (`python -m moto.server`) in its own process
on 127.0.0.1, so a request costs moto's Python request handling plus loopback, not a network round trip: on AWS
each request adds ~10-50 ms of latency and the upload is bound by bandwidth, neither of which is here. The figures
show the client's own cost (hashing, s3fs, the number of requests each operation makes) and its scaling with the
number of entries; on a real store multiply the request counts by its latency.

* push 20 MB — `Remote.push(ref)`: sha256-checked read of the local blob, LIST of the name's versions, HEAD of the
  blob, PUT of the blob, conditional PUT of the entry; vs `Registry.push(dir)` into the local registry (header
  check, sha256, fsync, one SQLite transaction). Each call pushes new bytes, so the blob is never skipped.
* fetch 20 MB — `Remote.fetch(ref)` into an empty local registry: resolve (LIST, GET entry), GET blob, sha256
  re-check, local push; vs `Registry.pull(ref, dir)` (sha256-checked read, PEFT files written durably).
* list — `Remote.list()` over N names: one LIST of `index/`, one LIST of `tags/`, and a GET (issued concurrently
  by s3fs) of each newest entry not already copied locally (remote_cache.py): with the copies removed before
  every call (a first listing) and with them kept (every later one); vs `Registry.list()` of the same N adapters
  in the local SQLite index.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.harness import Context, Side

REQUIRES = {"moto": "moto[server]", "s3fs": "s3fs", "flask": "moto[server]"}
DEVICES = ("cpu", "cuda")
REMOTE, LOCAL = "S3 remote (moto, loopback)", "local registry"
REMOTE_COLD = "S3 remote, no entry cached"
ADAPTER_MB, QUICK_ADAPTER_MB = 20, 2
ENTRIES, QUICK_ENTRIES = 1_000, 100
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


def _populate_remote(remote, count: int) -> None:
    """`count` names with one small version each, written through the remote layout by 8 threads."""
    import torch
    from safetensors.torch import save

    from adapterhub_registry import remote_layout as layout
    from adapterhub_registry.blobs import sha256_hex

    def one(i: int) -> None:
        data = save({"base_model.model.layer.lora_A.weight": torch.full((4, 16), float(i))})
        digest = sha256_hex(data)
        layout.upload_blob(remote.store, data, digest)
        entry = layout.RemoteEntry(name=f"adapter-{i:05d}", version=0, method="lora", base_fingerprint=None,
                                   peft_config_text='{"peft_type": "LORA", "r": 4}', manifest={"description": f"number {i}"},
                                   metrics={}, blob_sha256=digest, size_bytes=len(data), created_at=0.0)  # fmt: skip
        layout.add_entry(remote.store, entry, newest=0)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


def run(ctx: Context) -> None:
    import boto3
    import torch
    from safetensors.torch import save_file

    from adapterhub_registry import Registry
    from adapterhub_registry.remote_config import RemoteConfigs

    megabytes = QUICK_ADAPTER_MB if ctx.quick else ADAPTER_MB
    entries = QUICK_ENTRIES if ctx.quick else ENTRIES
    repeats = 3 if ctx.quick else 7
    ctx.settings.update(adapter_mb=megabytes, entries=entries, s3_server="moto.server, separate process, 127.0.0.1")
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
            ctx.compare(
                f"push {megabytes} MB",
                Side(REMOTE, "Remote.push(ref): blob PUT + conditional entry PUT", remote.push, fresh_local_ref),
                Side(
                    LOCAL,
                    "Registry.push(dir)",
                    lambda d: local.push("local-push", d, method="lora"),
                    fresh_dir,
                    lambda d: shutil.rmtree(d),
                ),  # fmt: skip
                params=params,
                repeats=repeats,
                warmup=1,
            )
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
                f"fetch {megabytes} MB",
                Side(REMOTE, "Remote.fetch(ref) into an empty local registry (sha256 re-checked)",
                     lambda home: home.remote("origin").fetch("fetched"), empty_home, drop_home),
                Side(LOCAL, "Registry.pull(ref, dir)", lambda _: local.pull("fetched", pulled),
                     lambda: shutil.rmtree(pulled, ignore_errors=True)),
                params=params, repeats=repeats, warmup=1,
            )  # fmt: skip

            started = time.perf_counter()
            RemoteConfigs(local.root).add("listing", "s3://bench/listing", endpoint)
            listing_remote = local.remote("listing")
            _populate_remote(listing_remote, entries)
            ctx.note(f"Filling the remote with {entries:,} entries (8 threads, blob + entry each) took "
                     f"{time.perf_counter() - started:.1f} s.")  # fmt: skip
            listed = Registry(root / "listed")
            small = root / "small"
            small.mkdir()
            (small / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
            for i in range(entries):
                save_file({"base_model.model.layer.lora_A.weight": torch.full((4, 16), float(i))},
                          str(small / "adapter_model.safetensors"))  # fmt: skip
                listed.push(f"adapter-{i:05d}", small, method="lora")
            cold, warm, _ = ctx.compare(
                "list",
                Side(REMOTE_COLD, "Remote.list(): LIST index/ + tags/, GET the newest entry of each name",
                     lambda _: listing_remote.list(), lambda: shutil.rmtree(listing_remote.cache.directory, ignore_errors=True)),
                Side(REMOTE, "Remote.list(): LIST index/ + tags/, entries from the local copy", listing_remote.list),
                Side(LOCAL, "Registry.list()", listed.list),
                params={"entries": entries}, repeats=3 if ctx.quick else 5, warmup=1,
            )  # fmt: skip
            assert len(listing_remote.list()) == len(listed.list()) == entries
            ctx.check(f"Remote.list() of {entries:,} entries, entries cached (median)", warm.stats.median, 1000.0)
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
        "A push makes 5 requests (LIST versions, GET newest entry, HEAD blob, PUT blob, PUT entry if absent); "
        "a fetch 4 (LIST or GET tag, GET entry, HEAD + GET blob) before the local push; a list 2 LISTs + one GET per "
        "name not cached."
    )
