"""An NF4 base's linears run through a plugin's ``nf4_linear`` kernel when one is chosen (here Triton's, in its
CPU interpreter): the adapter pool's slotted layers and LoRA training on top of them give the same logits and
gradients as bitsandbytes' own forward (kept in float32: tests/bitsandbytes_reference.py); without such a kernel the layers stay bitsandbytes' own."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("bitsandbytes")
from adapterhub_triton.testing import import_kernels, kernel_device  # noqa: E402
from bitsandbytes_reference import bitsandbytes_in_float32  # noqa: E402
from test_runtime import TOKENS, push_random_adapter  # noqa: E402

from adapterhub import adapters, plugins  # noqa: E402
from adapterhub.base import load_base  # noqa: E402
from adapterhub.quantized_forward import Nf4KernelLinear  # noqa: E402
from adapterhub.runtime import AdapterPool  # noqa: E402

pytestmark = pytest.mark.skipif(
    kernel_device() != "cpu", reason="interpreter test; the GPU run uses the compiled kernel"
)
INPUT = TOKENS[:2, :4]


@pytest.fixture
def counted_kernel(monkeypatch):
    """Switch on the interpreted Triton kernels and count the NF4 kernel's calls; back to this machine after."""
    (nf4,) = import_kernels("nf4_matmul")
    calls = []
    kernel = nf4.nf4_linear
    monkeypatch.setattr(nf4, "nf4_linear", lambda *args: calls.append(1) or kernel(*args))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    plugins.reload()  # choose kernels again: the Triton ones now support this CPU
    yield calls
    monkeypatch.delenv("TRITON_INTERPRET")
    plugins.reload()


def pooled_logits(base):
    pool = AdapterPool(base, slots=1, max_rank=4)
    try:
        with pool.activate(["plain@1"]), torch.no_grad():
            return base.model(INPUT).logits
    finally:
        pool.close()


def lora_gradients(base):
    torch.manual_seed(0)
    model = adapters.attach(base, "lora", adapters.make_options("lora", {"r": 4, "dropout": 0.0}))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.2)
    model(INPUT, labels=INPUT).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def test_without_a_kernel_the_nf4_layers_stay_bitsandbytes_own(tiny_llama, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    plugins.reload()
    base = load_base(tiny_llama, quantize="nf4")
    assert not any(isinstance(m, Nf4KernelLinear) for m in base.model.modules())


def test_pool_over_nf4_base_runs_the_kernel_and_equals_bitsandbytes(tiny_llama, tmp_path, counted_kernel):
    push_random_adapter(load_base(tiny_llama), "plain", {"r": 4}, tmp_path)
    ours = pooled_logits(load_base(tiny_llama, quantize="nf4"))
    assert len(counted_kernel) == 14  # every quantized linear of both layers (7 each) went through the kernel
    with pytest.MonkeyPatch.context() as off:
        off.delenv("TRITON_INTERPRET")
        plugins.reload()
        nf4 = load_base(tiny_llama, quantize="nf4")
        bitsandbytes_in_float32(nf4.model)
        expected = pooled_logits(nf4)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_lora_training_over_nf4_runs_the_kernel_and_equals_bitsandbytes_gradients(tiny_llama, counted_kernel):
    ours = lora_gradients(load_base(tiny_llama, quantize="nf4"))
    assert len(counted_kernel) >= 14
    with pytest.MonkeyPatch.context() as off:
        off.delenv("TRITON_INTERPRET")
        plugins.reload()
        nf4 = load_base(tiny_llama, quantize="nf4")
        bitsandbytes_in_float32(nf4.model)
        expected = lora_gradients(nf4)
    assert ours.keys() == expected.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], expected[name], rtol=1e-3, atol=1e-4, msg=name)
