"""The remote's index (remote_index.py): one snapshot plus the log since, right under concurrent and killed writers."""

from __future__ import annotations

import json
import logging
import multiprocessing
import random
import time

import pytest
from test_registry_remote_support import (  # noqa: F401
    add_remote,
    aws_env,
    bucket,
    home_with_remote,
    moto_endpoint,
    push_until_killed,
    pushed,
    start_python,
)

from adapterhub_registry import remote_index as index_module
from adapterhub_registry import remote_layout as layout
from adapterhub_registry.remote_index import IndexState

_PUSHER = """
import json, os, sys, time
from adapterhub_registry import Registry
remote = Registry({root!r}).remote("origin")
remote.store.list("index/")  # connected and imported before the start signal
print("ready", flush=True)
while not os.path.exists({go!r}):
    time.sleep(0.001)
print(json.dumps([remote.push(f"shared@{{v}}").ref for v in range(1, {count} + 1)]), flush=True)
"""


@pytest.mark.integration
def test_two_processes_pushing_one_name_get_40_distinct_versions_and_the_index_lists_all(
    tmp_path, bucket, moto_endpoint
):
    url, go, count = f"s3://{bucket}/team", tmp_path / "go", 20
    children = []
    for machine in range(2):
        registry = home_with_remote(tmp_path, f"machine{machine}", url, moto_endpoint)
        for version in range(count):
            pushed(registry, tmp_path / f"m{machine}", "shared", seed=100 * machine + version)
        registry.close()
        children.append(start_python(_PUSHER.format(root=str(registry.root), go=str(go), count=count), {}))
    for child in children:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
    go.touch()
    refs = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        refs += json.loads(out)
    assert sorted(refs) == sorted(f"shared@{v}" for v in range(1, 2 * count + 1))  # distinct, none lost
    reader = home_with_remote(tmp_path, "reader", url, moto_endpoint).remote("origin")
    assert reader.index.head() is not None  # the first push built the index; the listing reads it
    assert [r.ref for r in reader.list(all_versions=True)] == sorted(refs, key=lambda r: int(r.split("@")[1]))
    assert reader.compact()  # and a machine that reads only the new snapshot sees the same 40
    fresh = home_with_remote(tmp_path, "fresh", url, moto_endpoint).remote("origin")
    assert [r.ref for r in fresh.list(all_versions=True)] == [r.ref for r in reader.list(all_versions=True)]


def test_an_entry_whose_log_object_stayed_pending_is_listed_and_a_pending_one_without_entry_is_not(tmp_path):
    """The two places a push can die inside the index: after its entry (listed) and before it (nothing listed)."""
    url = f"file://{tmp_path / 'shared'}"
    trainer = home_with_remote(tmp_path, "trainer", url)
    pushed(trainer, tmp_path, "sst2", seed=1)
    remote = trainer.remote("origin")
    remote.push("sst2")  # a small remote: this push built the index
    assert remote.index.head() is not None
    entry = layout.read_entry(remote.store, "sst2", 1)
    remote.index.begin("ghost")  # killed before writing anything else
    started = remote.index.begin("sst2")  # killed after its entry, before the log object says so
    layout.add_entry(remote.store, entry)
    reader = home_with_remote(tmp_path, "reader", url).remote("origin")
    assert [r.ref for r in reader.list(all_versions=True)] == ["sst2@1", "sst2@2"]
    assert reader.compact()  # the pending objects are young: compaction stays before them, readers still fold them
    assert [r.ref for r in reader.list(all_versions=True)] == ["sst2@1", "sst2@2"]
    remote.index.commit(started, "sst2", rows=[index_module.row(layout.read_entry(remote.store, "sst2", 2))])
    assert [r.ref for r in home_with_remote(tmp_path, "late", url).remote("origin").list(all_versions=True)] == [
        "sst2@1",
        "sst2@2",
    ]


def test_a_reader_applies_tag_moves_by_their_seq_whatever_order_they_were_logged_in():
    state = IndexState()
    for seq, version in [(3, 7), (1, 5), (2, 6)]:  # logged out of order by three movers
        state.apply({"name": "sst2", "tags": [["prod", version, seq]]})
    assert state.tags == {("sst2", "prod"): (7, 3)}


def test_a_remote_written_before_the_index_lists_with_a_hint_and_compact_builds_the_index(tmp_path, caplog):
    url = f"file://{tmp_path / 'shared'}"
    trainer = home_with_remote(tmp_path, "trainer", url)
    pushed(trainer, tmp_path, "sst2", seed=1)
    remote = trainer.remote("origin")
    remote.push("sst2")
    for key in remote.store.list("catalog/"):  # as the layout before the index left it: entries only
        remote.store.delete(key)
    reader = home_with_remote(tmp_path, "reader", url).remote("origin")
    with caplog.at_level(logging.WARNING, logger="adapterhub_registry.remote_index"):
        assert [r.ref for r in reader.list()] == ["sst2@1"]
    assert "no index yet" in caplog.text and "adapterhub registry compact --remote" in caplog.text
    assert reader.compact()
    caplog.clear()
    assert [r.ref for r in reader.list()] == ["sst2@1"] and "no index" not in caplog.text


def test_of_two_compactions_from_one_state_one_moves_head_and_listing_stays_whole(tmp_path):
    url = f"file://{tmp_path / 'shared'}"
    trainer = home_with_remote(tmp_path, "trainer", url)
    remote = trainer.remote("origin")
    for seed in range(3):
        remote.push(pushed(trainer, tmp_path, f"name{seed}", seed=seed))
    first, second = (home_with_remote(tmp_path, f"compactor{i}", url).remote("origin").index for i in range(2))
    second_fold = second._fold()  # the second reads HEAD before the first moves it
    assert first.compact() and second_fold is not None
    assert not second._write(second_fold)  # its compare-and-swap fails: HEAD keeps the first one's snapshot
    assert [r.ref for r in remote.list()] == ["name0@1", "name1@1", "name2@1"]


def test_search_filters_by_method_tag_base_prefix_and_metrics_as_the_local_index(tmp_path):
    url = f"file://{tmp_path / 'shared'}"
    trainer = home_with_remote(tmp_path, "trainer", url)
    remote = trainer.remote("origin")
    remote.push(pushed(trainer, tmp_path, "sst2", 1, base_fingerprint="fp-aaa", metrics={"accuracy": 0.9},
                        manifest={"description": "Sentiment"}), tags=["prod"])  # fmt: skip
    remote.push(pushed(trainer, tmp_path, "imdb", 2, base_fingerprint="fp-bbb", metrics={"accuracy": 0.6}))
    remote.push(pushed(trainer, tmp_path, "news", 3, base_fingerprint="fp-aab"))
    reader = home_with_remote(tmp_path, "reader", url).remote("origin")
    assert [r.name for r in reader.search("")] == ["imdb", "news", "sst2"]
    assert [r.name for r in reader.search("sentiment")] == ["sst2"]  # the description
    assert [r.name for r in reader.search("", base="fp-aa")] == ["news", "sst2"]
    assert [r.name for r in reader.search("", metrics=["accuracy>=0.7"])] == ["sst2"]
    assert [r.name for r in reader.search("", metrics=["accuracy<0.7"])] == ["imdb"]  # no metric never passes
    assert [r.name for r in reader.search("", tag="prod")] == ["sst2"]
    assert [r.name for r in reader.search("", method="ia3")] == []
    assert [r.ref for r in reader.list(tag="prod")] == ["sst2@1"]


def test_a_warm_listing_reads_the_snapshot_from_the_local_copy_and_sees_new_pushes(tmp_path):
    url = f"file://{tmp_path / 'shared'}"
    trainer = home_with_remote(tmp_path, "trainer", url)
    trainer.remote("origin").push(pushed(trainer, tmp_path, "sst2", 1))
    reader = home_with_remote(tmp_path, "reader", url).remote("origin")
    assert [r.ref for r in reader.list()] == ["sst2@1"]
    snapshot = next(reader.cache.directory.rglob("*.json.gz"))
    assert snapshot.parent.name == "snapshots"
    trainer.remote("origin").push(pushed(trainer, tmp_path, "sst2", 2), tags=["prod"])
    assert [(r.ref, r.tags) for r in reader.list(all_versions=True)] == [("sst2@1", ()), ("sst2@2", ("prod",))]


@pytest.mark.integration
def test_pushes_killed_at_random_points_leave_a_remote_that_lists_fetches_and_verifies(tmp_path, bucket, moto_endpoint):
    url, kills = f"s3://{bucket}/team", 20
    trainer = home_with_remote(tmp_path, "trainer", url, moto_endpoint)
    for seed in range(kills):
        pushed(trainer, tmp_path, "sst2", seed=seed)
    trainer.close()
    # Children forked from a server that imported the registry once: a fresh interpreter per kill would spend
    # ~2 s of this shared CPU on imports, 20 times.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["test_registry_remote_support", "s3fs", "aiobotocore.session"])
    rng = random.Random(0)
    for _ in range(kills):
        ready = context.Event()
        child = context.Process(target=push_until_killed, args=(str(trainer.root), kills, ready))
        child.start()
        assert ready.wait(timeout=60), "the pusher did not start"
        time.sleep(rng.uniform(0.0, 0.15))  # a push takes ~50-100 ms here: kills land anywhere inside one
        child.kill()  # SIGKILL
        child.join(timeout=30)
    reader = home_with_remote(tmp_path, "reader", url, moto_endpoint)
    remote = reader.remote("origin")
    listed = remote.list(all_versions=True)
    truth = index_module.read_truth(remote.store, None)
    assert [(r.name, r.version) for r in listed] == sorted(truth.rows)  # killed after the entry: still listed
    assert listed, "no push got as far as its entry; lengthen the random wait"
    report = remote.verify()
    assert report.ok_all, (report.corrupt, report.index_problems)
    fetched = remote.fetch(listed[-1].ref)
    assert fetched.blob_sha256 == listed[-1].blob_sha256
