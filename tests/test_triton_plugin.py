"""The Triton kernel plugin: what it contributes, and where it says its kernels can and cannot run."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from adapterhub_triton import support

from adapterhub import plugins
from adapterhub.cli import main

OPS = {"lora_forward", "lora_gather_forward", "lora_linear", "nf4_linear"}


def test_plugin_contributes_its_kernels_through_the_entry_point(capsys):
    contributed = {op for op, contributions in plugins.catalog().kernels.items()
                   for c in contributions if c.plugin == "triton_kernels"}  # fmt: skip
    assert contributed == OPS
    assert main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)["plugins"]}
    assert listed["triton_kernels"]["distribution"] == "adapterhub-triton-kernels"
    assert {k.split(":")[0] for k in listed["triton_kernels"]["kernels"]} == OPS


def test_cpu_without_interpreter_says_how_to_enable_it(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if importlib.util.find_spec("triton") is None:
        assert support.supports("cpu", torch.float32) == "triton is not installed (pip install triton)"
        return
    assert support.supports("cpu", torch.float32) == "no CUDA device (set TRITON_INTERPRET=1 to run the interpreter)"


def test_interpreter_runs_on_cpu_for_float_dtypes_only(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert support.supports(torch.device("cpu"), dtype) is None
    assert "not supported" in support.supports("cpu", torch.int8)
    assert "CPU only" in support.supports("cuda", torch.float32)


def test_missing_triton_is_the_reason(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real_find_spec(name, *a)
    )
    assert support.supports("cuda", torch.float16) == "triton is not installed (pip install triton)"


def test_core_falls_back_to_torch_and_records_why(monkeypatch):
    kernels = pytest.importorskip("adapterhub.kernels")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the Triton kernel is the one chosen")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    choice = kernels.choose_kernel(plugins.catalog(), "lora_gather_forward", "cpu", torch.float32)
    assert choice.plugin is None
    assert "TRITON_INTERPRET=1" in choice.passed_over["triton_kernels:triton-bgmv-sgmv"]


def test_kernels_benchmark_correctness_gate_covers_every_rank_and_passes():
    """The GPU benchmark's gate (fused forward + gradients, BGMV, SGMV at r = 8, 16, 64, 128; NF4), run here in the
    interpreter on small dims: it must pass on the right kernels and name every rank it checked."""
    from adapterhub_triton.testing import import_kernels, kernel_device

    import_kernels("bgmv", "sgmv", "fused_lora", "nf4_matmul")
    from benchmarks.suites.kernels import GATE_RANKS, check_correctness

    errors = check_correctness(kernel_device(), seed=0, dims=(21, 40, 36))
    assert set(GATE_RANKS) == {8, 16, 64, 128}
    for rank in GATE_RANKS:
        for what in ("fused_lora_forward", "fused_lora_dx", "fused_lora_dA", "fused_lora_dB", "bgmv", "sgmv"):
            assert f"max_error_{what}_r{rank}" in errors
