"""Behaviour of push / resolve / load / pull / export / tag / list / search / delete / set_metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_registry_support import adapter, blob_files, registry, write_adapter  # noqa: F401  (fixtures)

from adapterhub_registry import NotFoundError, RegistryError, default_root


def test_push_assigns_increasing_versions_and_bare_name_resolves_latest(registry, adapter, tmp_path):
    first = registry.push("sst2", adapter, method="lora", base_fingerprint="fp-a")
    second = registry.push("sst2", write_adapter(tmp_path / "v2", seed=1), method="lora")
    assert (first.version, second.version) == (1, 2)
    assert registry.resolve("sst2") == second
    assert registry.resolve("sst2@1") == first
    assert first.ref == "sst2@1" and first.base_fingerprint == "fp-a"
    assert first.peft_config["peft_type"] == "LORA"
    assert first.manifest["task"] == "seq-cls"


def test_resolve_missing_version_names_what_exists(registry, adapter):
    registry.push("sst2", adapter, method="lora", tags=["best"])
    with pytest.raises(NotFoundError, match=r"sst2@7.*@1.*best->@1"):
        registry.resolve("sst2@7")
    with pytest.raises(NotFoundError, match="no adapter named 'other'"):
        registry.resolve("other")


def test_push_merges_manifest_argument_over_sidecar(registry, adapter):
    record = registry.push("sst2", adapter, method="lora", manifest={"task": "nli", "labels": ["a", "b"]})
    assert record.manifest == {"task": "nli", "labels": ["a", "b"], "description": "Sentiment on SST-2"}


def test_push_takes_base_fingerprint_from_the_manifest_when_not_given(registry, tmp_path):
    directory = write_adapter(tmp_path / "a", manifest={"base": {"fingerprint": "fp-manifest", "name": "tiny"}})
    assert registry.push("a", directory, method="lora").base_fingerprint == "fp-manifest"
    assert registry.push("a", directory, method="lora", base_fingerprint="fp-arg").base_fingerprint == "fp-arg"


def test_load_returns_the_pushed_tensors(registry, adapter):
    registry.push("sst2", adapter, method="lora")
    record, tensors = registry.load("sst2")
    expected = load_file(adapter / "adapter_model.safetensors")
    assert tensors.keys() == expected.keys()
    assert all(torch.equal(tensors[k], expected[k]) for k in expected)
    assert record.size_bytes == (adapter / "adapter_model.safetensors").stat().st_size


@pytest.mark.parametrize("ref", ["sst2", "sst2@1", "sst2:best"])
def test_pull_writes_peft_files_and_sidecar(registry, adapter, tmp_path, ref):
    registry.push("sst2", adapter, method="lora", base_fingerprint="fp", metrics={"accuracy": 0.7}, tags=["best"])
    dest = tmp_path / "pulled" / "deep"
    record = registry.pull(ref, dest)
    assert (dest / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()
    assert (dest / "adapter_config.json").read_bytes() == (adapter / "adapter_config.json").read_bytes()
    sidecar = json.loads((dest / "adapterhub.json").read_text())
    assert sidecar["task"] == "seq-cls"
    assert {k: sidecar[k] for k in ("name", "version", "method", "base_fingerprint", "metrics", "tags")} == {
        "name": "sst2",
        "version": 1,
        "method": "lora",
        "base_fingerprint": "fp",
        "metrics": {"accuracy": 0.7},
        "tags": ["best"],
    }
    assert record.ref == "sst2@1"


def test_tag_names_one_version_and_moves_when_retagged(registry, adapter, tmp_path):
    registry.push("sst2", adapter, method="lora", tags=["best"])
    registry.push("sst2", write_adapter(tmp_path / "v2", seed=1), method="lora", tags=["best"])
    assert registry.resolve("sst2:best").version == 2
    assert registry.resolve("sst2@1").tags == ()
    moved = registry.tag("sst2@1", "best")
    assert moved.version == 1 and moved.tags == ("best",)
    assert registry.resolve("sst2:best").version == 1


def test_untag_removes_the_tag_and_keeps_the_version(registry, adapter):
    registry.push("sst2", adapter, method="lora", tags=["best", "prod"])
    registry.untag("sst2", "best")
    assert registry.resolve("sst2@1").tags == ("prod",)
    with pytest.raises(NotFoundError, match="sst2:best"):
        registry.untag("sst2", "best")


def test_list_returns_latest_of_each_name_sorted_and_filters(registry, tmp_path):
    for i, (name, method, base) in enumerate(
        [("zeta", "lora", "fp-a"), ("alpha", "ia3", "fp-b"), ("alpha", "lora", "fp-a"), ("mid", "lora", "fp-b")]
    ):
        registry.push(name, write_adapter(tmp_path / str(i), seed=i), method=method, base_fingerprint=base)
    registry.tag("alpha@1", "old")
    assert [r.ref for r in registry.list()] == ["alpha@2", "mid@1", "zeta@1"]
    assert [r.ref for r in registry.list(all_versions=True)] == ["alpha@1", "alpha@2", "mid@1", "zeta@1"]
    assert [r.ref for r in registry.list(method="ia3")] == ["alpha@1"]
    assert [r.ref for r in registry.list(base_fingerprint="fp-b")] == ["alpha@1", "mid@1"]
    assert [r.ref for r in registry.list(tag="old")] == ["alpha@1"]
    assert [r.ref for r in registry.list(name="alpha", all_versions=True)] == ["alpha@1", "alpha@2"]
    assert [r.ref for r in registry.list(limit=2)] == ["alpha@2", "mid@1"]


def test_search_matches_name_method_tag_and_description_case_insensitively(registry, tmp_path):
    registry.push("sst2-sentiment", write_adapter(tmp_path / "a", seed=1), method="lora")
    registry.push(
        "mnli",
        write_adapter(tmp_path / "b", seed=2, manifest={"description": "Natural Language Inference"}),
        method="ia3",
    )
    registry.push("qa", write_adapter(tmp_path / "c", seed=3), method="lora", tags=["Production"])
    assert [r.name for r in registry.search("SENTI")] == ["sst2-sentiment"]
    assert [r.name for r in registry.search("IA3")] == ["mnli"]
    assert [r.name for r in registry.search("language inf")] == ["mnli"]
    assert [r.name for r in registry.search("product")] == ["qa"]
    assert [r.name for r in registry.search("lora")] == ["qa", "sst2-sentiment"]
    assert registry.search("%") == [] and registry.search("_") == []


def test_delete_one_version_keeps_a_blob_another_version_shares(registry, adapter, tmp_path):
    registry.push("a", adapter, method="lora")
    registry.push("b", adapter, method="lora")  # same bytes: one blob
    registry.push("a", write_adapter(tmp_path / "v2", seed=5), method="lora")
    assert len(blob_files(registry)) == 2
    deleted = registry.delete("a@1")
    assert [r.ref for r in deleted] == ["a@1"]
    assert len(blob_files(registry)) == 2
    registry.load("b")
    registry.delete("a")
    assert len(blob_files(registry)) == 1
    registry.delete("b")
    assert blob_files(registry) == [] and registry.list() == []


def test_delete_unknown_ref_raises_and_changes_nothing(registry, adapter):
    registry.push("a", adapter, method="lora")
    with pytest.raises(NotFoundError):
        registry.delete("a@2")
    assert registry.resolve("a").version == 1


def test_versions_are_never_reused_after_delete(registry, adapter):
    registry.push("a", adapter, method="lora")
    registry.push("a", adapter, method="lora")
    registry.delete("a@2")
    assert registry.push("a", adapter, method="lora").version == 3


def test_export_peft_writes_byte_identical_files_and_refuses_to_overwrite(registry, adapter, tmp_path):
    registry.push("a", adapter, method="lora")
    dest = registry.export_peft("a", tmp_path / "export")
    assert sorted(p.name for p in dest.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (dest / name).read_bytes() == (adapter / name).read_bytes()
    with pytest.raises(RegistryError, match="overwrite=True"):
        registry.export_peft("a", dest)
    registry.export_peft("a", dest, overwrite=True)


def test_export_peft_replaces_a_symlink_instead_of_writing_through_it(registry, adapter, tmp_path):
    registry.push("a", adapter, method="lora")
    outside = tmp_path / "outside.json"
    outside.write_text("keep me")
    dest = tmp_path / "export"
    dest.mkdir()
    (dest / "adapter_config.json").symlink_to(outside)
    registry.export_peft("a", dest, overwrite=True)
    assert outside.read_text() == "keep me"
    assert not (dest / "adapter_config.json").is_symlink()


def test_exported_adapter_loads_with_peft(registry, tmp_path):
    peft = pytest.importorskip("peft")

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj = torch.nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.q_proj(x)

    torch.manual_seed(0)
    base = Tiny()
    base_weights = {k: v.clone() for k, v in base.state_dict().items()}
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False)
    trained = peft.get_peft_model(base, config)
    trained.save_pretrained(tmp_path / "saved")
    registry.push("tiny", tmp_path / "saved", method="lora")
    exported = registry.export_peft("tiny", tmp_path / "export")
    fresh = Tiny()
    fresh.load_state_dict(base_weights)
    loaded = peft.PeftModel.from_pretrained(fresh, exported)
    x = torch.randn(2, 8)
    torch.testing.assert_close(loaded(x), trained(x), rtol=0, atol=0)


def test_set_metrics_merges_into_existing_metrics(registry, adapter):
    registry.push("a", adapter, method="lora", metrics={"accuracy": 0.5, "loss": 1.0})
    updated = registry.set_metrics("a@1", {"accuracy": 0.71, "f1": 0.6})
    assert updated.metrics == {"accuracy": 0.71, "loss": 1.0, "f1": 0.6}
    assert registry.resolve("a").metrics == updated.metrics


def test_record_to_dict_is_json_serialisable(registry, adapter):
    record = registry.push("a", adapter, method="lora", tags=["x"])
    data = json.loads(json.dumps(record.to_dict()))
    assert data["ref"] == "a@1" and data["tags"] == ["x"] and data["blob_sha256"] == record.blob_sha256


def test_default_root_follows_adapterhub_home_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAPTERHUB_HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / "registry"
    monkeypatch.delenv("ADAPTERHUB_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "adapterhub" / "registry"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_root() == Path.home() / ".local" / "share" / "adapterhub" / "registry"


def test_ten_thousand_entries_list_and_search_correctly(registry, adapter):
    template = registry.push("seed", adapter, method="lora")  # every row below re-uses this one blob
    # A config the size of a real peft LoraConfig (~1 KB), so the timing reflects real rows.
    config = json.dumps({**template.peft_config, **{f"option_{k}": [k, None, "value"] for k in range(40)}})
    rows = [
        (
            f"adapter-{i:05d}",
            1 + i % 2,
            "lora" if i % 3 else "ia3",
            f"fp-{i % 7}",
            config,
            json.dumps({"description": f"task number {i}"}),
            json.dumps({"accuracy": i / 10_000}),
            template.blob_sha256,
            template.size_bytes,
            time.time(),
        )
        for i in range(10_000)
    ]
    with registry._index.write() as writer:
        writer._conn.executemany(
            "INSERT INTO adapters (name, version, method, base_fingerprint, peft_config, manifest, metrics,"
            " blob_sha256, size_bytes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        writer.set_tag("adapter-00042", "best", 1)

    listed = registry.list()  # speed is measured in benchmarks/, not here
    assert len(listed) == 10_001 and listed[0].name == "adapter-00000" and listed[-1].name == "seed"
    found = registry.search("task number 4242")
    assert [r.name for r in found] == ["adapter-04242"]
    filtered = registry.list(method="ia3", base_fingerprint="fp-0")
    assert len(filtered) == len([i for i in range(10_000) if i % 3 == 0 and i % 7 == 0])
    assert registry.list(tag="best")[0].tags == ("best",)
