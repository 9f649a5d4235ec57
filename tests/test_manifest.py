"""The manifest (adapterhub.json): stored manifests of every version read back, unknown keys survive a round
trip, the JSON keys stay those adapterhub has always written, and the base fingerprint is recorded once."""

from __future__ import annotations

import json

from adapterhub import adapters
from adapterhub.base import load_base
from adapterhub.manifest import BaseIdentity, ContinualEntry, Manifest
from adapterhub_registry import Registry

TRAINED = {  # a manifest as `adapterhub train` has written it since format 1
    "format": 1,
    "method": "lora",
    "plugin": {"name": "lora", "distribution": "adapterhub-lora", "version": "0.1.0"},
    "options": {"r": 8, "alpha": 16},
    "task": "seq-cls",
    "labels": ["neg", "pos"],
    "base": {
        "fingerprint": "abc123",
        "model_type": "bert",
        "shape": {"layers": 2},
        "source": "tiny",
        "quantization": None,
    },
    "data": {"path": "tweets.csv", "sha256": "f00d", "test_split": 0.2},
    "data_summary": {"train_examples": 80, "test_examples": 20},
    "training": {"epochs": 3, "steps": 15, "world_size": 1},
    "continual": {"sequence": "tweets", "task": "airline", "position": 0, "digest": "d1", "router": {"max_length": 48}},
}


def test_a_trained_manifest_round_trips_key_for_key():
    manifest = Manifest.from_dict(TRAINED)
    assert manifest.to_dict() == TRAINED
    assert json.dumps(manifest.to_dict(), sort_keys=True) == json.dumps(TRAINED, sort_keys=True)


def test_fields_read_as_attributes_not_dict_lookups():
    manifest = Manifest.from_dict(TRAINED)
    assert manifest.model_task == "seq-cls" and manifest.labels == ["neg", "pos"]
    assert manifest.base_fingerprint == "abc123" and manifest.data_sha256 == "f00d"
    assert manifest.continual == ContinualEntry("tweets", "airline", 0, "d1", {"max_length": 48})


def test_an_old_manifest_with_missing_keys_reads_with_none():
    manifest = Manifest.from_dict({"format": 1, "method": "lora", "imported_from": "peft"})
    assert manifest.model_task is None and manifest.labels is None and manifest.base is None
    assert manifest.base_fingerprint is None and manifest.data_sha256 is None and manifest.continual is None
    assert manifest.to_dict() == {"format": 1, "method": "lora", "imported_from": "peft"}


def test_unknown_keys_are_kept_at_every_level():
    stored = {**TRAINED, "description": "airline tweets", "tags": ["x"],
              "base": {**TRAINED["base"], "revision": "main"}}  # fmt: skip
    manifest = Manifest.from_dict(stored)
    assert manifest.extra == {"description": "airline tweets", "tags": ["x"]}
    assert manifest.base == BaseIdentity("abc123", "bert", {"layers": 2}, "tiny", None, extra={"revision": "main"})
    assert manifest.to_dict() == stored


def test_a_saved_adapter_records_the_base_fingerprint_once_and_the_registry_takes_it_from_there(tiny_llama, tmp_path):
    base = load_base(tiny_llama)
    options = adapters.make_options("lora", {"r": 2})
    adapters.save_adapter(
        adapters.attach(base, "lora", options), tmp_path / "a", adapters.build_manifest(base, "lora", options)
    )
    written = json.loads((tmp_path / "a" / "adapterhub.json").read_text())
    assert written["base"]["fingerprint"] == base.fingerprint_id and written["task"] == "causal-lm"
    assert "base_fingerprint" not in written
    record = Registry(tmp_path / "registry").push("a", tmp_path / "a", method="lora")
    assert record.base_fingerprint == base.fingerprint_id
    assert Manifest.from_dict(record.manifest).to_dict() == written
