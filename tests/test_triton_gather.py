"""Gathered multi-adapter LoRA kernels (BGMV, SGMV) against their torch references and the core's reference op.

Runs the kernels in Triton's CPU interpreter (``TRITON_INTERPRET=1`` while they are defined; numpy
underneath, so shapes stay tiny), or compiled on a GPU with ``TRITON_INTERPRET=0``. Sizes are deliberately
not multiples of the block sizes. Tolerances: float32 atol/rtol 1e-4; float16 2e-2 (the rank-r
intermediate is rounded to float16 as peft rounds it); bfloat16 6e-2.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from adapterhub_triton.testing import import_kernels, kernel_device  # noqa: E402

bgmv, sgmv = import_kernels("bgmv", "sgmv")
DEVICE = kernel_device()
KERNELS = {"bgmv": bgmv.bgmv, "sgmv": sgmv.sgmv}
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}


def random_slots(slots: int, rank: int, d_in: int, d_out: int, dtype: torch.dtype, ranks: list[int] | None = None):
    """Slot tensors like the runtime's pool: adapters of lower rank are zero-padded up to ``rank``."""
    A = torch.randn(slots, rank, d_in) * 0.3
    B = torch.randn(slots, d_out, rank) * 0.3
    for slot, r in enumerate(ranks or []):
        A[slot, r:] = 0
        B[slot, :, r:] = 0
    scales = torch.rand(slots) + 0.5
    return A.to(DEVICE, dtype), B.to(DEVICE, dtype), scales.to(DEVICE)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kernel", ["bgmv", "sgmv"])
def test_gather_matches_reference_on_ragged_segments(kernel, dtype):
    torch.manual_seed(0)
    A, B, scales = random_slots(5, 7, 45, 53, dtype, ranks=[7, 3, 1, 7, 5])
    lengths = torch.tensor([3, 0, 17, 1, 20, 0, 2])  # empty segments, and runs straddling 16/32-row tiles
    slot_ids = sgmv.segments_to_slot_ids(lengths, torch.tensor([2, 4, 1, 0, 3, 1, 2])).to(DEVICE)
    x = torch.randn(int(lengths.sum()), 45).to(DEVICE, dtype)
    assert_close(KERNELS[kernel](x, A, B, scales, slot_ids), bgmv.bgmv_reference(x, A, B, scales, slot_ids), dtype)


@pytest.mark.parametrize("kernel", ["bgmv", "sgmv"])
def test_slot_minus_one_gives_zero_delta(kernel):
    torch.manual_seed(1)
    A, B, scales = random_slots(3, 4, 20, 19, torch.float32)
    slot_ids = torch.tensor([-1, 0, -1, -1, 2, 1, -1], dtype=torch.int32, device=DEVICE)
    x = torch.randn(7, 20, device=DEVICE)
    delta = KERNELS[kernel](x, A, B, scales, slot_ids)
    assert torch.count_nonzero(delta[slot_ids.cpu() == -1]) == 0
    assert_close(delta, sgmv.sgmv_reference(x, A, B, scales, slot_ids), torch.float32)


@pytest.mark.parametrize("kernel", ["bgmv", "sgmv"])
def test_rank_zero_and_empty_batch(kernel):
    fn = KERNELS[kernel]
    A, B, scales = random_slots(2, 0, 12, 9, torch.float32)
    delta = fn(torch.randn(4, 12, device=DEVICE), A, B, scales, torch.tensor([0, 1, 1, 0], device=DEVICE))
    assert delta.shape == (4, 9) and torch.count_nonzero(delta) == 0
    A, B, scales = random_slots(2, 3, 12, 9, torch.float32)
    assert fn(
        torch.randn(0, 12, device=DEVICE), A, B, scales, torch.zeros(0, dtype=torch.long, device=DEVICE)
    ).shape == (0, 9)


def test_sgmv_with_every_row_its_own_adapter():
    """The worst case for the tile loop: a tile holds as many adapters as rows."""
    torch.manual_seed(2)
    A, B, scales = random_slots(19, 4, 33, 17, torch.float32)
    slot_ids = torch.randperm(19).to(torch.int32).to(DEVICE)
    x = torch.randn(19, 33, device=DEVICE)
    assert_close(sgmv.sgmv(x, A, B, scales, slot_ids), bgmv.bgmv_reference(x, A, B, scales, slot_ids), torch.float32)


@pytest.mark.parametrize("shape", [(6, 24), (6, 1, 24), (3, 5, 24)])
def test_plugin_op_matches_core_reference(shape):
    """``adapterhub_triton.lora_gather_forward`` follows ``adapterhub.kernels``' contract (x: batch, *, d_in)."""
    kernels = pytest.importorskip("adapterhub.kernels")
    import adapterhub_triton

    torch.manual_seed(3)
    A, B, scales = random_slots(4, 5, 24, 30, torch.float32)
    slot_ids = torch.tensor([3, 0, 0, 2, 1, 3][: shape[0]], device=DEVICE)
    x = torch.randn(*shape, device=DEVICE)
    expected = kernels.lora_gather_forward(x, A, B, scales, slot_ids)
    assert_close(adapterhub_triton.lora_gather_forward(x, A, B, scales, slot_ids), expected, torch.float32)


@pytest.mark.parametrize("rank", [1, 7, 16, 17, 64, 128])
@pytest.mark.parametrize("kernel", ["bgmv", "sgmv"])
def test_gather_is_right_at_every_rank_the_kernels_take(kernel, rank):
    torch.manual_seed(4)
    A, B, scales = random_slots(3, rank, 70, 90, torch.float32, ranks=[rank, max(1, rank // 2), 1])
    slot_ids = torch.tensor([2, 0, 0, 1, 1, 1, 0, 2, 2], dtype=torch.int32, device=DEVICE)
    x = torch.randn(9, 70, device=DEVICE)
    assert_close(
        KERNELS[kernel](x, A, B, scales, slot_ids), bgmv.bgmv_reference(x, A, B, scales, slot_ids), torch.float32
    )


def test_a_slot_rank_above_the_tiles_runs_in_torch_through_the_core(monkeypatch):
    """The plugin's ``fits`` refuses the shape, so the chosen kernel hands that call to the torch reference."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the plugin supports the CPU through the interpreter
    kernels = pytest.importorskip("adapterhub.kernels")
    import adapterhub_triton
    from adapterhub_triton.support import MAX_GATHER_RANK, gather_fits

    from adapterhub.plugins import Catalog, Contribution

    spec = next(s for s in adapterhub_triton.adapterhub_kernels() if s.op == "lora_gather_forward")
    catalog = Catalog()
    catalog.kernels["lora_gather_forward"] = [Contribution(spec, "adapterhub-triton-kernels")]
    choice = kernels.choose_kernel(catalog, "lora_gather_forward", "cpu", torch.float32)
    assert choice.plugin == "adapterhub-triton-kernels"
    A, B, scales = random_slots(2, MAX_GATHER_RANK + 1, 20, 10, torch.float32)
    x, ids = torch.randn(3, 4, 20, device=DEVICE), torch.tensor([0, 1, 0], device=DEVICE)
    assert "above" in gather_fits(x, A, B, scales, ids)
    assert torch.equal(choice.fn(x, A, B, scales, ids), kernels.lora_gather_forward(x, A, B, scales, ids))
    assert not choice.fn.failed
