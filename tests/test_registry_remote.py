"""A remote registry on S3 (moto on loopback) and on a shared directory: sharing, integrity, cut-off uploads."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_registry_remote_support import add_remote, aws_env, bucket, moto_endpoint, start_python  # noqa: F401
from test_registry_support import LORA_CONFIG, write_adapter

from adapterhub_registry import CorruptBlobError, NotFoundError, Registry, RegistryError
from adapterhub_registry import remote_layout as layout


@pytest.fixture
def two_homes(tmp_path, bucket, moto_endpoint):
    """Two local registries (two machines' ADAPTERHUB_HOMEs) with the same S3 remote `origin`."""
    homes = [Registry(tmp_path / name / "registry") for name in ("trainer", "server")]
    for registry in homes:
        add_remote(registry, f"s3://{bucket}/team", moto_endpoint)
    yield homes
    for registry in homes:
        registry.close()


@pytest.mark.integration
def test_two_homes_share_an_adapter_through_the_s3_remote(two_homes, tmp_path):
    trainer, server = two_homes
    adapter = write_adapter(tmp_path / "a", seed=3, manifest={"description": "Sentiment on SST-2"})
    local = trainer.push("sst2", adapter, method="lora", base_fingerprint="fp-tiny", metrics={"accuracy": 0.8})
    pushed = trainer.remote("origin").push(local.ref, tags=["prod"])
    assert (pushed.ref, pushed.tags) == ("sst2@1", ("prod",))

    fetched = server.remote("origin").fetch("sst2:prod")
    assert fetched.manifest["remote"] | {"fetched_at": 0} == {
        "name": "origin", "url": server.remote("origin").config.url, "ref": "sst2@1", "version": 1,
        "sha256": local.blob_sha256, "fetched_at": 0,
    }  # fmt: skip
    assert (fetched.blob_sha256, fetched.base_fingerprint, fetched.metrics) == (
        local.blob_sha256,
        "fp-tiny",
        {"accuracy": 0.8},
    )
    assert fetched.manifest["description"] == "Sentiment on SST-2"
    _, tensors = server.load(fetched.ref)
    _, expected = trainer.load(local.ref)
    assert all(torch.equal(tensors[k], expected[k]) for k in expected)
    assert server.remote("origin").fetch("sst2@1") == fetched  # fetched once, then served from the local copy
    assert [r.ref for r in server.list(all_versions=True)] == ["sst2@1"]


@pytest.mark.integration
def test_remote_versions_are_the_remotes_own_and_tags_move(two_homes, tmp_path):
    trainer, server = two_homes
    remote = trainer.remote("origin")
    for seed in range(3):
        trainer.push("sst2", write_adapter(tmp_path / f"a{seed}", seed=seed), method="lora")
    remote.push("sst2@3", tags=["prod"])
    remote.push("sst2@1")
    assert remote.push("sst2@1").ref == "sst2@2"  # the same bytes again: no new version
    assert remote.tag("sst2@2", "prod").tags == ("prod",)
    listed = server.remote("origin").list(all_versions=True)
    assert [(r.ref, r.tags, r.blob_sha256) for r in listed] == [
        ("sst2@1", (), trainer.resolve("sst2@3").blob_sha256),
        ("sst2@2", ("prod",), trainer.resolve("sst2@1").blob_sha256),
    ]
    tag, _ = layout.read_tag(remote.store, "sst2", "prod")
    assert tag["version"] == 2 and [h["version"] for h in tag["history"]] == [1]
    assert server.remote("origin").fetch("sst2:prod").manifest["remote"]["ref"] == "sst2@2"


@pytest.mark.integration
def test_fetch_refuses_a_corrupted_blob_and_stores_nothing(two_homes, tmp_path):
    trainer, server = two_homes
    local = trainer.push("sst2", write_adapter(tmp_path / "a"), method="lora")
    remote = trainer.remote("origin")
    remote.push("sst2")
    data = bytearray(remote.store.read(layout.blob_key(local.blob_sha256)))
    data[-1] ^= 0xFF  # one flipped bit in the last tensor: same size, other bytes
    remote.store.put(layout.blob_key(local.blob_sha256), bytes(data))
    with pytest.raises(
        CorruptBlobError, match=r"hashes to [0-9a-f]{64}, not " + local.blob_sha256 + r".*refused.*push"
    ):
        server.remote("origin").fetch("sst2")
    assert server.list() == []


@pytest.mark.integration
def test_fetch_of_a_missing_blob_says_to_push_again(two_homes, tmp_path):
    trainer, server = two_homes
    local = trainer.push("sst2", write_adapter(tmp_path / "a"), method="lora")
    remote = trainer.remote("origin")
    remote.push("sst2")
    remote.store.fs.rm_file(remote.store.path(layout.blob_key(local.blob_sha256)))
    with pytest.raises(CorruptBlobError, match="is missing; push sst2 again"):
        server.remote("origin").fetch("sst2@1")


@pytest.mark.integration
def test_a_blob_without_its_entry_is_never_visible(two_homes, tmp_path):
    """A pusher killed after its blob and before its entry (the entry is written last) leaves no entry."""
    trainer, server = two_homes
    local = trainer.push("sst2", write_adapter(tmp_path / "a"), method="lora")
    remote = trainer.remote("origin")
    remote.store.put(layout.blob_key(local.blob_sha256), trainer.read_blob(local))  # what the killed push left
    reader = server.remote("origin")
    assert reader.list(all_versions=True) == [] and reader.search("sst2") == []
    with pytest.raises(NotFoundError, match="has no adapter 'sst2'"):
        reader.fetch("sst2")
    assert remote.push("sst2").ref == "sst2@1"  # the next push completes it (the blob is already there)
    assert reader.fetch("sst2").blob_sha256 == local.blob_sha256


_KILLED_PUSH = """
from adapterhub_registry import Registry
registry = Registry({root!r})
print("ready", flush=True)
registry.remote({remote!r}).push("big")
"""


@pytest.mark.integration
def test_a_push_killed_mid_upload_leaves_no_entry(tmp_path):
    """kill -9 while the blob is being written to a file remote: no entry, a hidden temp file, and pushes go on.

    The kill lands when the first file appears under blobs/ (the temp file); should the machine be so loaded
    that the write finished first, the invariant is still checked and the kill is tried again on a new remote.
    """
    trainer = Registry(tmp_path / "trainer")
    directory = tmp_path / "big"
    directory.mkdir()
    generator = torch.Generator().manual_seed(0)
    save_file(
        {"base_model.model.q_proj.lora_A.weight": torch.randn(8, 1024 * 1024, generator=generator)},
        directory / "adapter_model.safetensors",
    )  # 32 MiB: its write lasts long enough to be caught in
    (directory / "adapter_config.json").write_text(json.dumps(LORA_CONFIG))
    local = trainer.push("big", directory, method="lora")
    for attempt in range(3):
        shared = tmp_path / f"shared{attempt}"
        add_remote(trainer, f"file://{shared}", name=f"shared{attempt}")
        child = start_python(_KILLED_PUSH.format(root=str(trainer.root), remote=f"shared{attempt}"), {})
        assert child.stdout.readline().strip() == "ready"
        blobs = shared / "blobs" / "sha256"
        deadline = time.monotonic() + 30
        while not (blobs.is_dir() and any(blobs.iterdir())) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0005)
        child.send_signal(signal.SIGKILL)
        child.wait()
        remote = trainer.remote(f"shared{attempt}")
        entries = remote.list(all_versions=True)
        assert all(e.blob_sha256 == local.blob_sha256 for e in entries)  # whatever is listed is complete
        if blobs.is_dir() and not (blobs / local.blob_sha256).exists():
            break
    else:
        pytest.fail("three kills all came after the blob was written; the mid-upload case was not hit")
    assert [p.name.startswith(".tmp-") for p in blobs.iterdir()] == [True]
    assert entries == [] and remote.store.list("blobs/") == []  # the temp file is not an object
    with pytest.raises(NotFoundError):
        remote.resolve("big")
    assert remote.push("big").blob_sha256 == local.blob_sha256
    reader = Registry(tmp_path / "server")
    add_remote(reader, f"file://{shared}")
    assert reader.remote("origin").fetch("big").blob_sha256 == local.blob_sha256


def test_file_remote_shares_adapters_and_uploads_a_blob_once(tmp_path):
    shared = tmp_path / "nfs" / "adapters"
    trainer, server = Registry(tmp_path / "a"), Registry(tmp_path / "b")
    for registry in (trainer, server):
        add_remote(registry, f"file://{shared}")
    adapter = write_adapter(tmp_path / "adapter", seed=1)
    local = trainer.push("sst2", adapter, method="lora")
    trainer.push("copy", adapter, method="lora")
    remote = trainer.remote("origin")
    remote.push("sst2")
    blob = shared / "blobs" / "sha256" / local.blob_sha256
    inode = blob.stat().st_ino
    assert remote.push("copy").ref == "copy@1"
    assert blob.stat().st_ino == inode  # not written again
    assert sorted((shared / "index").rglob("*.json")) == [
        shared / "index" / n / "0000000001.json" for n in ("copy", "sst2")
    ]
    fetched = server.remote("origin").fetch("copy")
    assert fetched.manifest["remote"]["url"] == f"file://{shared}" and server.load("copy")[0] == fetched


def test_listing_keeps_entries_read_once_and_still_sees_new_versions(tmp_path):
    trainer, server = Registry(tmp_path / "a"), Registry(tmp_path / "b")
    for registry in (trainer, server):
        add_remote(registry, f"file://{tmp_path / 'shared'}")
    trainer.push("sst2", write_adapter(tmp_path / "a0", seed=0), method="lora")
    trainer.remote("origin").push("sst2")
    reader = server.remote("origin")
    assert [r.ref for r in reader.list()] == ["sst2@1"]
    assert [p.parent.name for p in reader.cache.directory.rglob("*.json.gz")] == ["snapshots"]  # the index, kept
    trainer.push("sst2", write_adapter(tmp_path / "a1", seed=1), method="lora")
    trainer.remote("origin").push("sst2", tags=["prod"])
    assert [(r.ref, r.tags) for r in reader.list(all_versions=True)] == [("sst2@1", ()), ("sst2@2", ("prod",))]


def test_unknown_remote_and_bad_urls_are_refused_with_what_to_do(tmp_path):
    registry = Registry(tmp_path / "r")
    with pytest.raises(NotFoundError, match=r"no remote named 'origin' \(configured: none\).*remote add origin"):
        registry.remote("origin")
    for url, message in [("bucket/prefix", "not a remote URL"), ("file://relative/x", "three slashes"),
                         ("s3:/bucket", "not a remote URL"), ("s3:///prefix", "names no bucket"),
                         ("gs://bucket", None)]:  # fmt: skip
        if message is None:
            add_remote(registry, url, name="gcs")
            with pytest.raises(RegistryError, match=r"no remote store handles gs://.*available: file://, s3://"):
                registry.remote("gcs")
        else:
            with pytest.raises(RegistryError, match=message):
                add_remote(registry, url)
    add_remote(registry, f"file://{tmp_path}/x")
    with pytest.raises(RegistryError, match="already exists"):
        add_remote(registry, f"file://{tmp_path}/y")


@pytest.mark.integration
def test_a_missing_bucket_names_the_fix(tmp_path, moto_endpoint, aws_env):
    registry = Registry(tmp_path / "r")
    registry.push("sst2", write_adapter(tmp_path / "a"), method="lora")
    add_remote(registry, "s3://no-such-bucket/team", moto_endpoint)
    with pytest.raises(RegistryError, match="bucket does not exist; create it"):
        registry.remote("origin").push("sst2")


@pytest.mark.integration
def test_pushing_a_fetched_version_drops_its_provenance(two_homes, tmp_path):
    trainer, server = two_homes
    trainer.push("sst2", write_adapter(tmp_path / "a"), method="lora")
    trainer.remote("origin").push("sst2")
    server.remote("origin").fetch("sst2")
    backup = tmp_path / "backup"
    add_remote(server, f"file://{backup}", name="backup")
    pushed = server.remote("backup").push("sst2")
    assert "remote" not in pushed.manifest
    assert Path(backup, "index", "sst2", "0000000001.json").is_file()


def test_an_entry_whose_blob_is_not_a_sha256_is_refused_before_any_read(tmp_path):
    """Whoever can write the remote writes its entries: a blob "digest" that is a path never reaches the store."""
    shared = tmp_path / "shared"
    registry = Registry(tmp_path / "r")
    add_remote(registry, f"file://{shared}")
    registry.push("sst2", write_adapter(tmp_path / "a"), method="lora")
    remote = registry.remote("origin")
    good = remote.push("sst2")
    body = json.loads((shared / "index" / "sst2" / "0000000001.json").read_text())
    (shared / "index" / "evil").mkdir()
    (shared / "index" / "evil" / "0000000001.json").write_text(
        json.dumps({**body, "name": "evil", "blob_sha256": "../../../../etc/passwd"})
    )
    with pytest.raises(RegistryError, match=r"remote entry index/evil/0000000001.json is not a valid entry .*damaged"):
        remote.fetch("evil")
    assert remote.resolve("sst2") == good
