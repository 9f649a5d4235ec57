"""Several processes pushing, tagging, pulling, loading and deleting at once: nothing lost, duplicated or
corrupt, and no "database is locked" (or any error but "not found") reaches a caller.

The CI run is 8 processes x 12 operations; `ADAPTERHUB_STRESS=1` makes it 8 x 300, and
`python tests/stress/registry_stress.py concurrency --workers 8 --ops N` runs it on its own.
"""

from __future__ import annotations

import os

import pytest
from stress.registry_stress import run_concurrency
from test_registry_support import adapter, registry, write_adapter  # noqa: F401  (fixtures)

from adapterhub_registry import NotFoundError, Registry
from adapterhub_registry.blobs import BlobStore

STRESS = os.environ.get("ADAPTERHUB_STRESS") == "1"


def test_eight_processes_at_once_lose_duplicate_and_corrupt_nothing(tmp_path):
    ops = 300 if STRESS else 12
    summary = run_concurrency(tmp_path / "registry", workers=8, ops=ops, seed=3, timeout_s=600 if STRESS else 90)
    assert summary.problems == []
    assert summary.by_op.get("pushed", 0) > 0 and summary.operations > 8
    assert summary.entries_loaded == summary.entries_at_end


@pytest.fixture
def deleted_while_reading(registry, adapter, monkeypatch):
    """`registry` whose next blob read first sees `a@1` deleted by another process (a second Registry)."""
    registry.push("a", adapter, method="lora")
    for method in ("read", "reading"):  # pull and export_peft read bytes, load reads into a tensor
        read = getattr(BlobStore, method)

        def read_after_delete(self, *args, _read=read, _method=method, **kwargs):
            with Registry(registry.root) as other:
                other.delete("a@1")
            monkeypatch.setattr(BlobStore, _method, _read)
            return _read(self, *args, **kwargs)

        monkeypatch.setattr(BlobStore, method, read_after_delete)
    return registry


@pytest.mark.parametrize("operation", ["load", "pull", "export_peft"])
def test_reading_an_entry_deleted_meanwhile_says_not_found_not_corrupt(deleted_while_reading, tmp_path, operation):
    call = getattr(deleted_while_reading, operation)
    arguments = ("a@1",) if operation == "load" else ("a@1", tmp_path / "out")
    with pytest.raises(NotFoundError, match="a@1 was deleted by another process"):
        call(*arguments)
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_verify_does_not_report_an_entry_deleted_during_the_check_as_corrupt(registry, adapter, tmp_path, monkeypatch):
    doomed = registry.push("a", adapter, method="lora").blob_sha256
    registry.push("b", write_adapter(tmp_path / "b", seed=2), method="lora")
    problem = BlobStore.problem

    def problem_after_delete(self, digest, size):
        if digest == doomed:
            with Registry(registry.root) as other:
                other.delete("a@1")
        return problem(self, digest, size)

    monkeypatch.setattr(BlobStore, "problem", problem_after_delete)
    report = registry.verify()
    assert report.corrupt == [] and report.ok == ["b@1"] and report.checked == 1
