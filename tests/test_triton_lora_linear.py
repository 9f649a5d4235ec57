"""Fused LoRA linear (forward + backward) against plain torch, and peft models dispatched to it against peft.

Kernels run in Triton's CPU interpreter (or compiled on a GPU with ``TRITON_INTERPRET=0``); shapes are tiny
and not multiples of the block sizes. Tolerances: float32 atol/rtol 1e-4 (outputs and gradients); float16
2e-2 and bfloat16 6e-2 on O(1) values, where the reference runs in float32.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from adapterhub_lora.dispatch import patch_lora_model, unpatch_lora_model  # noqa: E402
from adapterhub_triton.support import supports  # noqa: E402
from adapterhub_triton.testing import import_kernels, kernel_device  # noqa: E402

(fused,) = import_kernels("fused_lora")
DEVICE = kernel_device()
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), atol=tol, rtol=tol)


def make_inputs(dtype: torch.dtype, bias: bool, M: int = 19, K: int = 37, N: int = 29, r: int = 5):
    torch.manual_seed(0)
    x = torch.randn(2, M, K) * 0.5
    weight = torch.randn(N, K) * 0.2
    b = torch.randn(N) if bias else None
    A = torch.randn(r, K) * 0.2
    B = torch.randn(N, r) * 0.2
    move = lambda t: None if t is None else t.to(DEVICE, dtype)  # noqa: E731
    return move(x), move(weight), move(b), move(A), move(B)


def outputs_and_grads(fn, x, weight, bias, A, B, scale, dropout_mask=None):
    """y and the gradients of (y * g).sum() for x, A, B (and bias), with a fixed random g."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, A, B)]
    bias_leaf = bias.detach().clone().requires_grad_() if bias is not None else None
    x_lora = leaves[0] * dropout_mask if dropout_mask is not None else None
    y = fn(leaves[0], weight, bias_leaf, leaves[1], leaves[2], scale, x_lora)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.device, y.dtype)
    (y * g).sum().backward()
    grads = [t.grad for t in leaves] + ([bias_leaf.grad] if bias is not None else [])
    return [y.detach(), *grads]


def reference_in_float32(x, weight, bias, A, B, scale, x_lora):
    up = lambda t: None if t is None else t.float()  # noqa: E731
    return fused.lora_linear_reference(up(x), up(weight), up(bias), up(A), up(B), scale, up(x_lora)).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_forward_and_backward_match_torch(dtype, bias):
    inputs = make_inputs(dtype, bias)
    ours = outputs_and_grads(fused.lora_linear, *inputs, 0.75)
    expected = outputs_and_grads(reference_in_float32, *inputs, 0.75)
    for actual, wanted in zip(ours, expected):
        assert_close(actual, wanted, dtype)


RANKS = [1, 7, 16, 17, 64, 65, 128]  # around the 16-wide dot tile and the in-register shrink limit (64)


@pytest.mark.parametrize("rank", RANKS)
def test_fused_forward_and_gradients_are_right_at_every_rank(rank):
    """Rows, columns and inputs span several blocks (64 x 64 tiles, 32-wide K steps) and are multiples of none."""
    inputs = make_inputs(torch.float32, bias=True, M=70, K=100, N=130, r=rank)
    ours = outputs_and_grads(fused.lora_linear, *inputs, 0.5)
    expected = outputs_and_grads(reference_in_float32, *inputs, 0.5)
    for actual, wanted in zip(ours, expected):
        assert_close(actual, wanted, torch.float32)


@pytest.mark.parametrize("rank", [17, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_half_precision_is_right_above_one_dot_tile(rank, dtype):
    inputs = make_inputs(dtype, bias=False, r=rank)
    ours = outputs_and_grads(fused.lora_linear, *inputs, 0.25)
    expected = outputs_and_grads(reference_in_float32, *inputs, 0.25)
    for actual, wanted in zip(ours, expected):
        assert_close(actual, wanted, dtype)


@pytest.mark.parametrize("rank", RANKS)
def test_lora_forward_is_right_at_every_rank(rank):
    kernels = pytest.importorskip("adapterhub.kernels")
    x, _, _, A, B = make_inputs(torch.float32, bias=False, M=70, K=100, N=130, r=rank)
    assert_close(fused.lora_forward(x, A, B, 0.5), kernels.lora_forward(x, A, B, 0.5), torch.float32)


@pytest.mark.parametrize("rank", [17, 128])
def test_dropout_path_is_right_above_one_dot_tile(rank):
    inputs = make_inputs(torch.float32, bias=True, r=rank)
    mask = (torch.rand(inputs[0].shape, generator=torch.Generator().manual_seed(2)) > 0.3).float().to(DEVICE) / 0.7
    ours = outputs_and_grads(fused.lora_linear, *inputs, 2.0, dropout_mask=mask)
    expected = outputs_and_grads(fused.lora_linear_reference, *inputs, 2.0, dropout_mask=mask)
    for actual, wanted in zip(ours, expected):
        assert_close(actual, wanted, torch.float32)


def test_dropout_input_gets_its_own_gradient():
    inputs = make_inputs(torch.float32, bias=True)
    mask = (torch.rand(inputs[0].shape, generator=torch.Generator().manual_seed(2)) > 0.3).float().to(DEVICE) / 0.7
    ours = outputs_and_grads(fused.lora_linear, *inputs, 2.0, dropout_mask=mask)
    expected = outputs_and_grads(fused.lora_linear_reference, *inputs, 2.0, dropout_mask=mask)
    for actual, wanted in zip(ours, expected):
        assert_close(actual, wanted, torch.float32)


def test_refuses_a_trainable_base():
    x, weight, _, A, B = make_inputs(torch.float32, bias=False)
    with pytest.raises(ValueError, match="frozen base"):
        fused.lora_linear(x, weight.requires_grad_(), None, A, B, 1.0)


def test_lora_forward_follows_the_core_contract_with_a_padded_rank_view():
    """``lora_forward`` gets ``B`` as a rank slice of a padded slot: a non-contiguous view."""
    kernels = pytest.importorskip("adapterhub.kernels")
    x, _, _, A, _ = make_inputs(torch.float32, bias=False)
    B_slot = torch.randn(29, 8, device=DEVICE) * 0.2
    B = B_slot[:, :5]
    assert_close(fused.lora_forward(x, A, B, 0.5), kernels.lora_forward(x, A, B, 0.5), torch.float32)


class TwoLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(21, 35)
        self.down = torch.nn.Linear(35, 13, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def peft_model(dropout: float, seed: int = 0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(
        TwoLayers(), LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["up", "down"])
    )
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero; make the adapter do something
            torch.nn.init.normal_(parameter, std=0.2)
    return model.to(DEVICE)


def loss_and_grads(model, x):
    torch.manual_seed(3)  # the same dropout masks on both sides
    loss = model(x).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_dispatched_peft_model_trains_like_peft(dropout, monkeypatch):
    import adapterhub_triton

    monkeypatch.setenv("TRITON_INTERPRET", "1" if DEVICE == "cpu" else "0")
    x = torch.randn(3, 6, 21, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    expected_loss, expected_grads = loss_and_grads(peft_model(dropout), x)
    model = peft_model(dropout)
    calls = []
    traced = lambda *args: calls.append(1) or adapterhub_triton.lora_linear(*args)  # noqa: E731
    assert patch_lora_model(model, traced, supports) == 2
    loss, grads = loss_and_grads(model, x)
    assert len(calls) == 2
    assert_close(loss, expected_loss, torch.float32)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        assert_close(grads[name], expected_grads[name], torch.float32)


def test_dispatch_falls_back_to_peft_where_the_op_cannot_run(monkeypatch):
    """No interpreter and no GPU (or a merged / disabled adapter): peft's own forward runs."""

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = peft_model(0.0).to("cpu")
    x = torch.randn(2, 21)
    expected = model(x)
    calls = []
    patch_lora_model(model, lambda *args: calls.append(1), supports)
    assert torch.equal(model(x), expected) and not calls
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with model.disable_adapter():
        model(x)
    assert not calls
    assert unpatch_lora_model(model) == 2
    assert torch.equal(model(x), expected)
