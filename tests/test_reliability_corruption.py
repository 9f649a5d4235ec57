"""Damaged blobs are caught by sha256 wherever they are read (load, pull, `eval`, `verify`) with the entry
named, and an adapter is never loaded onto a base it was not trained on unless forced, from the CLI too.

The library-level basics (last byte flipped, half truncated, missing blob, `verify` naming every sharing
ref) are in test_registry_safety.py; this adds the other damage shapes and the command line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_registry_support import adapter, registry, write_adapter  # noqa: F401  (fixtures)
from tiny_models import make_tiny_llama

from adapterhub import adapters
from adapterhub.base import load_base
from adapterhub.cli import main
from adapterhub_registry import CorruptBlobError, Registry


def _blob(registry: Registry, ref: str) -> Path:
    return registry.root / "blobs" / "sha256" / registry.resolve(ref).blob_sha256


DAMAGE = {
    "first byte flipped (header length)": lambda d: bytes([d[0] ^ 0x01]) + d[1:],
    "header byte flipped": lambda d: d[:20] + bytes([d[20] ^ 0x20]) + d[21:],
    "tensor byte flipped": lambda d: d[: len(d) - 40] + bytes([d[len(d) - 40] ^ 0x80]) + d[len(d) - 39 :],
    "emptied": lambda d: b"",
    "cut to its length prefix": lambda d: d[:8],
    "one byte appended": lambda d: d + b"\0",
    "replaced by another valid file": None,  # filled in by the test: a different adapter's bytes
}


@pytest.mark.parametrize("how", DAMAGE, ids=list(DAMAGE))
def test_any_damage_to_a_blob_is_caught_on_load_pull_and_verify_with_the_entry_named(registry, adapter, tmp_path, how):
    registry.push("a", adapter, method="lora")
    blob = _blob(registry, "a@1")
    data = blob.read_bytes()
    if DAMAGE[how] is None:
        damaged = (write_adapter(tmp_path / "other", seed=11) / "adapter_model.safetensors").read_bytes()
    else:
        damaged = DAMAGE[how](data)
    blob.write_bytes(damaged)
    with pytest.raises(CorruptBlobError, match=f"adapter a@1: blob {blob}"):
        registry.load("a")
    with pytest.raises(CorruptBlobError, match="a@1"):
        registry.pull("a", tmp_path / "out")
    with pytest.raises(CorruptBlobError, match="a@1"):
        registry.export_peft("a", tmp_path / "export")
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "export" / "adapter_model.safetensors").exists()
    assert [ref for ref, _ in registry.verify().corrupt] == ["a@1"]


def test_cli_verify_exits_1_naming_the_damaged_entry_and_0_when_all_is_well(registry, adapter, capsys):
    registry.push("a", adapter, method="lora")
    registry.push("b", adapter, method="lora", tags=["x"])
    root = str(registry.root)
    assert main(["registry", "--root", root, "verify"]) == 0
    assert "checked 2 adapter(s): 2 ok, 0 corrupt" in capsys.readouterr().out
    blob = _blob(registry, "a@1")
    blob.write_bytes(blob.read_bytes()[:-1])
    assert main(["registry", "--root", root, "verify"]) == 1
    out = capsys.readouterr().out
    assert f"CORRUPT a@1: blob {blob.name} has" in out and "CORRUPT b@1" in out
    assert main(["registry", "--root", root, "verify", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok_all"] is False
    assert main(["registry", "--root", root, "pull", "a", str(blob.parent.parent / "out")]) == 1
    assert "error: adapter a@1: blob" in capsys.readouterr().err


@pytest.fixture
def pushed_causal(tiny_llama, tmp_path):
    """A LoRA adapter for tiny_llama in the (per-test) default registry, as `adapterhub train --push` leaves it."""
    base = load_base(tiny_llama)
    options = adapters.make_options("lora")
    adapters.save_adapter(
        adapters.attach(base, "lora", options), tmp_path / "saved", adapters.build_manifest(base, "lora", options)
    )
    return Registry().push("tiny", tmp_path / "saved", method="lora", base_fingerprint=base.fingerprint_id)


def test_cli_eval_of_a_damaged_entry_fails_naming_it_and_loads_nothing(pushed_causal, tiny_llama, text_file, capsys):
    blob = Registry().root / "blobs" / "sha256" / pushed_causal.blob_sha256
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x04
    blob.write_bytes(bytes(data))
    assert main(["eval", "tiny", "--base", str(tiny_llama), "--data", str(text_file), "--json"]) == 1
    captured = capsys.readouterr()
    assert "error: adapter tiny@1: blob" in captured.err and "run `adapterhub registry verify`" in captured.err
    assert captured.out == ""  # no metrics: nothing was evaluated


def test_cli_eval_refuses_another_base_naming_both_unless_forced(pushed_causal, tmp_path, text_file, capsys):
    other = make_tiny_llama(tmp_path / "other-base", seed=5)
    other_fingerprint = load_base(other).fingerprint_id
    assert other_fingerprint != pushed_causal.base_fingerprint
    assert main(["eval", "tiny", "--base", str(other), "--data", str(text_file)]) == 1
    err = capsys.readouterr().err
    assert f"fingerprint {pushed_causal.base_fingerprint})" in err and f"fingerprint {other_fingerprint})" in err
    assert "--force" in err
    assert main(["eval", "tiny", "--base", str(other), "--data", str(text_file), "--force", "--json"]) == 0
    assert "loss" in json.loads(capsys.readouterr().out)["metrics"]
