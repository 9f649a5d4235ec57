"""A remote you can clean (remote_clean.py): delete a version, collect unused blobs, repair a damaged blob, verify;
and the --remote read commands through the CLI."""

from __future__ import annotations

import os
import time

import boto3
import pytest
from test_registry_remote_support import (  # noqa: F401
    aws_env,
    bucket,
    home_with_remote,
    moto_endpoint,
    pushed,
)
from test_registry_support import write_adapter

from adapterhub_registry import CorruptBlobError, NotFoundError, Registry, RegistryError
from adapterhub_registry import remote_layout as layout


def test_a_deleted_version_is_not_listed_or_fetched_and_one_a_tag_names_is_refused_until_moved(tmp_path):
    url = f"file://{tmp_path / 'shared'}"
    trainer = home_with_remote(tmp_path, "trainer", url)
    remote = trainer.remote("origin")
    for seed in range(3):
        remote.push(pushed(trainer, tmp_path, "sst2", seed))
    remote.tag("sst2@3", "prod")
    with pytest.raises(RegistryError, match=r"sst2@3 is what tag\(s\) sst2:prod point at; move them first"):
        remote.delete("sst2@3")
    with pytest.raises(RegistryError, match="names no version"):
        remote.delete("sst2")
    assert remote.delete("sst2@2").ref == "sst2@2"
    reader = home_with_remote(tmp_path, "reader", url).remote("origin")
    assert [r.ref for r in reader.list(all_versions=True)] == ["sst2@1", "sst2@3"]
    with pytest.raises(NotFoundError, match="sst2@2 was deleted"):
        reader.fetch("sst2@2")
    remote.tag("sst2@1", "prod")
    remote.delete("sst2@3")  # the tag moved away: now it goes
    assert reader.resolve("sst2").ref == "sst2@1"  # the newest live version
    assert [r.ref for r in reader.list()] == ["sst2@1"]
    assert remote.push(pushed(trainer, tmp_path, "sst2", 9)).ref == "sst2@4"  # numbers are never reused
    with pytest.raises(NotFoundError, match="was deleted"):
        remote.tag("sst2@3", "prod")


def test_gc_keeps_a_young_blob_of_a_push_in_flight_and_removes_old_unreferenced_ones(tmp_path):
    shared = tmp_path / "shared"
    trainer = home_with_remote(tmp_path, "trainer", f"file://{shared}")
    remote = trainer.remote("origin")
    kept = trainer.resolve(pushed(trainer, tmp_path, "kept", 1))
    remote.push(kept.ref)
    dropped = trainer.resolve(pushed(trainer, tmp_path, "dropped", 2))
    remote.push(dropped.ref)
    remote.delete("dropped@1")
    in_flight = trainer.resolve(pushed(trainer, tmp_path, "flight", 3))
    layout.upload_blob(remote.store, trainer.read_blob(in_flight), in_flight.blob_sha256)  # its entry not yet written
    killed = trainer.resolve(pushed(trainer, tmp_path, "killed", 4))
    layout.upload_blob(remote.store, trainer.read_blob(killed), killed.blob_sha256)
    two_days_ago = time.time() - 2 * 86400
    for record in (kept, dropped, killed):  # everything but the push in flight was written long ago
        os.utime(shared / layout.blob_key(record.blob_sha256), (two_days_ago, two_days_ago))
    with pytest.raises(RegistryError, match="too short"):
        remote.gc(60)
    assert remote.gc(dry_run=True).removed == sorted(layout.blob_key(r.blob_sha256) for r in (dropped, killed))
    report = remote.gc()
    assert sorted(report.removed) == sorted(layout.blob_key(r.blob_sha256) for r in (dropped, killed))
    assert layout.blob_key(in_flight.blob_sha256) in report.kept_young and report.live_blobs == 1
    blobs = {p.name for p in (shared / "blobs" / "sha256").iterdir()}
    assert blobs == {kept.blob_sha256, in_flight.blob_sha256}
    assert (
        home_with_remote(tmp_path, "reader", f"file://{shared}").remote("origin").fetch("kept").blob_sha256
        == kept.blob_sha256
    )


@pytest.mark.integration
def test_a_same_size_damaged_blob_is_reported_by_verify_and_replaced_by_pushing_again(tmp_path, bucket, moto_endpoint):
    url = f"s3://{bucket}/team"
    trainer = home_with_remote(tmp_path, "trainer", url, moto_endpoint)
    local = trainer.resolve(pushed(trainer, tmp_path, "sst2", 1))
    remote = trainer.remote("origin")
    remote.push(local.ref)
    good = trainer.read_blob(local)
    damaged = bytes([good[0] ^ 0xFF]) + good[1:]  # the same size, one byte flipped
    boto3.client("s3", endpoint_url=moto_endpoint).put_object(
        Bucket=bucket, Key=f"team/{layout.blob_key(local.blob_sha256)}", Body=damaged
    )
    server = home_with_remote(tmp_path, "server", url, moto_endpoint).remote("origin")
    with pytest.raises(CorruptBlobError, match="damaged"):
        server.fetch("sst2")
    report = server.verify()
    assert not report.ok_all and [ref for ref, _ in report.corrupt] == ["sst2@1"]
    assert remote.push(local.ref).ref == "sst2@1"  # the same version again, its blob written anew
    assert server.verify().ok_all
    assert server.fetch("sst2").blob_sha256 == local.blob_sha256


@pytest.mark.integration
def test_remote_commands_through_the_cli(cli, cli_json, tmp_path, bucket, moto_endpoint):
    url, home = f"s3://{bucket}/team", str(tmp_path / "home")
    with Registry(home) as registry:
        for seed, name in enumerate(("sst2", "imdb")):
            registry.push(name, write_adapter(tmp_path / name, seed=seed, manifest={"description": f"{name} reviews"}),
                          method="lora", metrics={"accuracy": 0.5 + seed / 4})  # fmt: skip
    base = ("registry", "--registry", home)
    cli(*base, "remote", "add", "origin", url, "--endpoint-url", moto_endpoint)
    cli(*base, "push-remote", "origin", "sst2", "--tag", "prod")
    cli(*base, "push-remote", "origin", "imdb")
    assert [r["ref"] for r in cli_json(*base, "list", "--remote", "origin", "--json")] == ["imdb@1", "sst2@1"]
    assert "sst2@1" in cli(*base, "list", "--remote", "origin", "--tag", "prod")
    assert [r["ref"] for r in cli_json(*base, "search", "reviews", "--remote", "origin", "--metric", "accuracy>0.6",
                                        "--json")] == ["imdb@1"]  # fmt: skip
    assert (
        cli_json(*base, "show", "sst2:prod", "--remote", "origin", "--json")["manifest"]["description"]
        == "sst2 reviews"
    )
    assert "snapshot" in cli(*base, "compact", "--remote", "origin")
    assert "checked 2 version(s) on origin: 2 ok, 0 damaged" in cli(*base, "verify", "--remote", "origin")
    assert cli(*base, "delete", "imdb@1", "--remote", "origin", "--yes").strip() == "deleted imdb@1 on origin"
    assert [r["ref"] for r in cli_json(*base, "list", "--remote", "origin", "--json")] == ["sst2@1"]
    report = cli_json(*base, "gc", "--remote", "origin", "--grace", "1h", "--json")
    assert report["removed"] == [] and report["live_blobs"] == 1 and len(report["kept_young"]) >= 1


def test_gc_removes_snapshots_head_no_longer_names_and_the_index_still_answers(tmp_path):
    shared = tmp_path / "shared"
    trainer = home_with_remote(tmp_path, "trainer", f"file://{shared}")
    remote = trainer.remote("origin")
    remote.push(pushed(trainer, tmp_path, "sst2", 1))  # builds the first index
    remote.push(pushed(trainer, tmp_path, "imdb", 2))
    assert remote.compact()
    snapshots = sorted((shared / "catalog" / "snapshots").iterdir())
    assert len(snapshots) >= 2  # the first push's and compact's (a push compacts now and then too)
    two_days_ago = time.time() - 2 * 86400
    for path in (shared / "catalog").rglob("*.json*"):
        os.utime(path, (two_days_ago, two_days_ago))
    named = remote.index.head()["snapshot"]
    removed = remote.gc().removed
    assert [k for k in removed if k.startswith("catalog/snapshots/")] == [
        f"catalog/snapshots/{p.name}" for p in snapshots if not p.name.startswith(named)
    ]
    reader = home_with_remote(tmp_path, "reader", f"file://{shared}").remote("origin")
    assert [r.ref for r in reader.list()] == ["imdb@1", "sst2@1"]
