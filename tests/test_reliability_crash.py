"""A writer killed with SIGKILL at any point leaves the registry usable: committed entries intact, no half
entry visible, leftovers removed on open or by `verify --repair`.

The randomised run is small here (12 kills); `ADAPTERHUB_STRESS=1` makes it 150, and
`python tests/stress/registry_stress.py crash --crashes N` runs it on its own.
"""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest
from stress.registry_stress import KILL_POINTS, _install_kill_point, make_adapters, run_crashes

from adapterhub.cli import main
from adapterhub_registry import NotFoundError, Registry

STRESS = os.environ.get("ADAPTERHUB_STRESS") == "1"
_FORK = multiprocessing.get_context("fork")
pytestmark = pytest.mark.integration  # every test kills forked writers


def _killed_while(root: str, point: str, action: str, adapter_dir: str) -> None:
    _install_kill_point(point, 1)
    registry = Registry(root)
    if action == "push":
        registry.push("a", adapter_dir, method="lora", tags=["latest"])
    else:
        registry.delete("a@1")
    os._exit(3)  # the kill point was not reached


def _run_killed(root, point: str, action: str, adapter_dir) -> None:
    child = _FORK.Process(target=_killed_while, args=(str(root), point, action, str(adapter_dir)))
    child.start()
    child.join(timeout=30)
    if child.is_alive():
        child.kill()
        child.join()
    assert child.exitcode == -signal.SIGKILL


@pytest.mark.parametrize("point", [p for p in KILL_POINTS if p != "before-blob-removal"])
def test_push_killed_at_each_point_of_its_write_leaves_old_entries_intact_and_no_half_entry(tmp_path, point):
    first, second = make_adapters(tmp_path / "adapters", 2)
    root = tmp_path / "registry"
    with Registry(root) as registry:
        kept = registry.push("a", first, method="lora", tags=["latest"])
    _run_killed(root, point, "push", second)

    with Registry(root) as registry:  # opening removes the dead writer's temp file
        assert list((root / "blobs" / "sha256").glob(".tmp-*")) == []
        assert registry.resolve("a@1") == kept
        versions = registry.list(name="a", all_versions=True)
        assert [r.version for r in versions] in ([1], [1, 2])  # the push happened entirely or not at all
        if len(versions) == 1:
            assert registry.resolve("a:latest").version == 1
        report = registry.verify(repair=True)
        assert report.corrupt == [] and report.checked == len(versions)
        assert registry.verify().ok_all  # no orphan blob, no temp file left
        for record in versions:
            registry.load(record.ref)


def test_delete_killed_between_commit_and_blob_removal_leaves_an_orphan_that_repair_removes(tmp_path, capsys):
    (first,) = make_adapters(tmp_path / "adapters", 1)
    root = tmp_path / "registry"
    with Registry(root) as registry:
        blob = root / "blobs" / "sha256" / registry.push("a", first, method="lora").blob_sha256
    _run_killed(root, "before-blob-removal", "delete", first)

    with Registry(root) as registry:
        with pytest.raises(NotFoundError):
            registry.resolve("a@1")
        assert blob.exists()
    assert main(["registry", "--root", str(root), "verify"]) == 1  # leftovers are reported
    assert f"leftover: {blob}" in capsys.readouterr().out
    assert main(["registry", "--root", str(root), "verify", "--repair"]) == 0
    assert f"removed: {blob}" in capsys.readouterr().out
    assert not blob.exists()
    assert main(["registry", "--root", str(root), "verify"]) == 0


def test_writer_killed_at_random_moments_never_loses_or_damages_a_committed_entry(tmp_path):
    crashes = 150 if STRESS else 12
    summary = run_crashes(tmp_path / "registry", crashes, seed=7)
    assert summary.problems == []
    assert summary.crashes == crashes and summary.external_kills == crashes // 2
    assert set(summary.self_kills) == set(KILL_POINTS)
    assert summary.pushes_committed > 0 and summary.entries_verified > 0
