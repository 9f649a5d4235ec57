"""Several writers on one remote at once, with no server of ours in between: no version and no tag move is lost."""

from __future__ import annotations

import json
import threading

import pytest
from test_registry_remote_support import add_remote, aws_env, bucket, moto_endpoint, start_python  # noqa: F401
from test_registry_support import write_adapter

from adapterhub_registry import Registry
from adapterhub_registry import remote_layout as layout

PUSHES_EACH = 3

_PUSHER = """
import json, os, sys, time
from adapterhub_registry import Registry
remote = Registry({root!r}).remote("origin")
remote.store.list("index/")  # connected and imported before the start signal
print("ready", flush=True)
while not os.path.exists({go!r}):
    time.sleep(0.001)
print(json.dumps([[remote.push(f"shared@{{v}}").ref, v] for v in range(1, {count} + 1)]), flush=True)
"""


@pytest.fixture(params=[pytest.param("s3", marks=pytest.mark.integration), "file"])  # s3: moto's server
def remote_url(request, tmp_path):
    """(url, endpoint) of an empty remote on moto's S3 server or in a directory."""
    if request.param == "file":
        return f"file://{tmp_path / 'shared'}", None
    return f"s3://{request.getfixturevalue('bucket')}/team", request.getfixturevalue("moto_endpoint")


@pytest.mark.integration
def test_concurrent_pushes_of_one_name_from_two_processes_get_distinct_versions(tmp_path, remote_url):
    url, endpoint = remote_url
    go = tmp_path / "go"
    pushed_sha: dict[tuple[int, int], str] = {}
    children = []
    for machine in range(2):
        registry = Registry(tmp_path / f"machine{machine}")
        add_remote(registry, url, endpoint)
        for version in range(1, PUSHES_EACH + 1):
            adapter = write_adapter(tmp_path / f"m{machine}v{version}", seed=100 * machine + version)
            pushed_sha[machine, version] = registry.push("shared", adapter, method="lora").blob_sha256
        registry.close()
        children.append(start_python(_PUSHER.format(root=str(registry.root), go=str(go), count=PUSHES_EACH), {}))
    for child in children:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
    go.touch()
    remote_sha = {}
    for machine, child in enumerate(children):
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        for remote_ref, local_version in json.loads(out):
            assert remote_ref not in remote_sha, f"{remote_ref} was handed to two pushes"
            remote_sha[remote_ref] = pushed_sha[machine, local_version]
    assert sorted(remote_sha) == sorted(f"shared@{v}" for v in range(1, 2 * PUSHES_EACH + 1))
    reader = Registry(tmp_path / "reader")
    add_remote(reader, url, endpoint)
    listed = reader.remote("origin").list(all_versions=True)
    assert {r.ref: r.blob_sha256 for r in listed} == remote_sha  # every push is there, with its own bytes


def test_concurrent_tag_moves_lose_no_move(tmp_path, remote_url):
    """Movers race on one tag; compare-and-swap retries the losers, so the tag's history holds every other move."""
    url, endpoint = remote_url
    registry = Registry(tmp_path / "r")
    add_remote(registry, url, endpoint)
    remote = registry.remote("origin")
    movers = 4
    for seed in range(movers):
        registry.push("sst2", write_adapter(tmp_path / f"a{seed}", seed=seed), method="lora")
        remote.push(f"sst2@{seed + 1}")
    start = threading.Barrier(movers)
    errors = []

    def move(version: int) -> None:
        try:
            start.wait()
            layout.move_tag(remote.store, "sst2", "prod", version)
        except Exception as exc:  # reported below: an assert in a thread would pass silently
            errors.append(exc)

    threads = [threading.Thread(target=move, args=(v,)) for v in range(1, movers + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    tag, _ = layout.read_tag(remote.store, "sst2", "prod")
    assert sorted([h["version"] for h in tag["history"]] + [tag["version"]]) == list(range(1, movers + 1))
