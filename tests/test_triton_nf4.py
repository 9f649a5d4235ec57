"""NF4 dequantize-in-the-matmul kernel against bitsandbytes' ``dequantize_4bit`` followed by a torch matmul.

Weights are quantized by bitsandbytes itself (``quantize_4bit``, NF4, with and without double quantization),
with element counts that are odd and not a multiple of the quantization block. Kernels run in Triton's CPU
interpreter (or compiled on a GPU with ``TRITON_INTERPRET=0``). Tolerances: float32 atol/rtol 1e-4 (both
sides multiply the same dequantized values); float16 2e-2 and bfloat16 6e-2 on O(1) outputs.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
bnb_functional = pytest.importorskip("bitsandbytes.functional")
from adapterhub_triton.testing import import_kernels, kernel_device  # noqa: E402

(nf4,) = import_kernels("nf4_matmul")
DEVICE = kernel_device()
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}


def quantized(N: int, K: int, dtype: torch.dtype, double_quant: bool, blocksize: int = 64):
    torch.manual_seed(0)
    weight = (torch.randn(N, K) * 0.2).to(DEVICE, dtype)
    return bnb_functional.quantize_4bit(weight, blocksize=blocksize, compress_statistics=double_quant, quant_type="nf4")


def assert_close(actual, expected, dtype):
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_matmul_matches_bitsandbytes_dequantize(dtype, double_quant):
    packed, state = quantized(13, 37, dtype, double_quant)  # 481 elements: odd, and 7.5 blocks of 64
    x = (torch.randn(2, 9, 37) * 0.5).to(DEVICE, dtype)
    bias = torch.randn(13).to(DEVICE, dtype)
    assert_close(nf4.nf4_linear(x, packed, state, bias), nf4.nf4_linear_reference(x, packed, state, bias), dtype)


def test_nf4_linear_backward_gives_input_and_bias_gradients():
    packed, state = quantized(20, 33, torch.float32, double_quant=True, blocksize=32)
    grads = []
    for fn in (nf4.nf4_linear, nf4.nf4_linear_reference):
        x = torch.randn(5, 33, generator=torch.Generator().manual_seed(1)).to(DEVICE).requires_grad_()
        bias = torch.zeros(20, device=DEVICE, requires_grad=True)
        y = fn(x, packed, state, bias)
        (y * torch.arange(20, device=DEVICE)).sum().backward()
        grads.append((y.detach(), x.grad, bias.grad))
    for ours, expected in zip(*grads):
        assert_close(ours, expected, torch.float32)


def test_refuses_fp4_weights():
    torch.manual_seed(0)
    packed, state = bnb_functional.quantize_4bit(torch.randn(16, 16).to(DEVICE), quant_type="fp4")
    with pytest.raises(ValueError, match="NF4"):
        nf4.nf4_matmul(torch.randn(2, 16).to(DEVICE), packed, state)
