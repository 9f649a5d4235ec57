"""The kernel hook: torch references of the runtime ops, and how a plugin kernel is chosen or passed over."""

from __future__ import annotations

import logging

import torch
from test_plugins import install_fake_distribution, site_dir  # noqa: F401  (site_dir is a fixture)

from adapterhub import kernels
from adapterhub.plugins import Catalog, Contribution
from adapterhub.specs import KernelSpec


def _slots(slots=4, r_max=6, d_in=12, d_out=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    A = torch.randn(slots, r_max, d_in, generator=generator)
    B = torch.randn(slots, d_out, r_max, generator=generator)
    return A, B, torch.rand(slots, generator=generator) + 0.5


def test_gathered_reference_equals_each_row_alone():
    A, B, scales = _slots()
    x = torch.randn(5, 3, 12)  # (batch, seq, d_in)
    slot_ids = torch.tensor([2, 0, 2, 3, 1])
    delta = kernels.lora_gather_forward(x, A, B, scales, slot_ids)
    for row, slot in enumerate(slot_ids.tolist()):
        alone = kernels.lora_forward(x[row], A[slot], B[slot], scales[slot].item())
        torch.testing.assert_close(delta[row], alone, rtol=1e-5, atol=1e-6)


def test_gathered_reference_takes_rows_without_a_sequence_axis():
    A, B, scales = _slots()
    x = torch.randn(3, 12)  # (batch, d_in): a pooler's input
    delta = kernels.lora_gather_forward(x, A, B, scales, torch.tensor([1, 1, 0]))
    assert delta.shape == (3, 10)
    torch.testing.assert_close(delta[2], kernels.lora_forward(x[2], A[0], B[0], scales[0].item()), rtol=1e-5, atol=1e-6)


def _catalog(*specs: KernelSpec) -> Catalog:
    catalog = Catalog()
    for spec in specs:
        catalog.kernels.setdefault(spec.op, []).append(Contribution(spec, "test-kernels"))
    return catalog


def _scaled_reference(*args):
    return kernels.lora_gather_forward(*args)


def test_highest_priority_supporting_kernel_wins_and_the_others_say_why():
    def cuda_only(device, dtype):
        return None if device.type == "cuda" else "needs a CUDA device"

    catalog = _catalog(
        KernelSpec("lora_gather_forward", "triton", _scaled_reference, cuda_only, priority=10),
        KernelSpec("lora_gather_forward", "cpu-a", _scaled_reference, lambda d, t: None, priority=5),
        KernelSpec("lora_gather_forward", "cpu-b", _scaled_reference, lambda d, t: None, priority=1),
    )  # fmt: skip
    choice = kernels.choose_kernel(catalog, "lora_gather_forward", "cpu", torch.float32)
    assert choice.name == "cpu-a" and choice.plugin == "test-kernels"
    assert choice.passed_over == {"test-kernels:triton": "needs a CUDA device",
                                  "test-kernels:cpu-b": "lower priority than test-kernels:cpu-a"}  # fmt: skip
    assert kernels.choose_kernel(_catalog(), "lora_gather_forward", "cpu", torch.float32).name == "torch"


def test_kernel_that_raises_falls_back_to_torch_with_a_warning(caplog):
    def broken(*args):
        raise RuntimeError("illegal memory access")

    catalog = _catalog(KernelSpec("lora_gather_forward", "broken", broken, lambda d, t: None))
    choice = kernels.choose_kernel(catalog, "lora_gather_forward", "cpu", torch.float32)
    A, B, scales = _slots()
    x, ids = torch.randn(2, 3, 12), torch.tensor([0, 3])
    with caplog.at_level(logging.WARNING, logger="adapterhub.kernels"):
        delta = choice.fn(x, A, B, scales, ids)
    torch.testing.assert_close(delta, kernels.lora_gather_forward(x, A, B, scales, ids))
    assert "broken" in caplog.text and "illegal memory access" in caplog.text and "torch reference" in caplog.text


def test_installed_plugins_leave_torch_active_on_cpu_and_the_report_names_each_op():
    report = {row["op"]: row for row in kernels.kernel_report("cpu")}
    assert set(report) == {"lora_forward", "lora_gather_forward", "lora_linear", "nf4_linear"}
    assert {op: row["active"] for op, row in report.items()} == dict.fromkeys(report, "torch (reference)")
    choice = kernels.select_kernel("lora_gather_forward", "cpu", torch.float32)
    assert (choice.name, choice.plugin) == ("torch", None) and choice.fn is kernels.lora_gather_forward
    A, B, scales = _slots()
    x, slot_ids = torch.randn(4, 3, 12, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 0, 3, 1])
    expected = torch.stack([scales[s] * (x[b] @ A[s].T) @ B[s].T for b, s in enumerate(slot_ids.tolist())])
    torch.testing.assert_close(choice.fn(x, A, B, scales, slot_ids), expected, rtol=1e-5, atol=1e-5)


FUSED_LORA_PLUGIN = """
    import torch
    import adapterhub
    from adapterhub import kernels
    from adapterhub.specs import KernelSpec

    CALLS = []

    def traced_lora_linear(*args):
        CALLS.append(args[0].shape)
        return kernels.lora_linear(*args)

    @adapterhub.hookimpl
    def adapterhub_kernels():
        return [KernelSpec("lora_linear", "traced", traced_lora_linear, lambda device, dtype: None, 5)]
"""


def test_attach_dispatches_lora_training_to_a_plugin_fused_kernel(site_dir, tiny_llama):
    """A plugin's lora_linear kernel is used by training wherever it supports the base; gradients equal peft's."""
    import importlib

    from adapterhub import adapters, plugins
    from adapterhub.base import load_base

    tokens = torch.tensor([[7, 8, 9, 10, 11]])
    options = adapters.make_options("lora", {"r": 4, "dropout": 0, "target_modules": "q_proj,v_proj"})

    def one_step_grads(base):
        torch.manual_seed(0)
        model = adapters.attach(base, "lora", options)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.1)
        model(input_ids=tokens, labels=tokens).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    expected = one_step_grads(load_base(tiny_llama))
    install_fake_distribution(site_dir, "fakeplugin-fused", "fakeplugin_fused", FUSED_LORA_PLUGIN)
    plugins.reload()
    dispatched = one_step_grads(load_base(tiny_llama))
    calls = importlib.import_module("fakeplugin_fused").CALLS
    assert len(calls) == 4  # 2 layers x (q_proj, v_proj)
    assert dispatched.keys() == expected.keys()
    for name in dispatched:
        torch.testing.assert_close(dispatched[name], expected[name], rtol=1e-5, atol=1e-6)


def test_a_kernel_that_does_not_fit_a_call_leaves_that_call_to_torch():
    """``fits`` is asked per call: the kernel runs the shapes it takes, the reference the others, nothing fails."""
    calls = []

    def narrow(*args):
        calls.append(args[1].shape[1])
        return kernels.lora_gather_forward(*args)

    def fits(x, A_slots, *rest):
        return None if A_slots.shape[1] <= 8 else f"rank {A_slots.shape[1]} is above 8"

    catalog = _catalog(KernelSpec("lora_gather_forward", "narrow", narrow, lambda d, t: None, fits=fits))
    choice = kernels.choose_kernel(catalog, "lora_gather_forward", "cpu", torch.float32)
    x, ids = torch.randn(2, 3, 12), torch.tensor([0, 3])
    for r_max in (6, 9):
        A, B, scales = _slots(r_max=r_max)
        torch.testing.assert_close(choice.fn(x, A, B, scales, ids), kernels.lora_gather_forward(x, A, B, scales, ids))
    assert calls == [6] and not choice.fn.failed
