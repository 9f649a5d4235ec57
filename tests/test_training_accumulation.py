"""--grad-accum and --gradient-checkpointing change how a step is computed, not what it computes: N micro-batches
train the adapter one batch N times as large trains, and recomputed activations give the same gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapterhub.settings import DataSpec, TrainSettings
from adapterhub.workflow import TrainJob, train_adapter

LORA = {"r": "4", "dropout": "0", "target_modules": "q_proj,v_proj"}


def _trained(tiny_llama, text_file, output: Path, **settings) -> tuple[dict[str, torch.Tensor], float]:
    job = TrainJob(str(tiny_llama), "lora", DataSpec(str(text_file), test_split=0.5), "causal-lm", LORA,
                   TrainSettings(epochs=1, learning_rate=1e-2, block_size=32, seed=3, **settings),
                   output=str(output), progress=False)  # fmt: skip
    outcome = train_adapter(job)
    return load_file(output / "adapter_model.safetensors"), outcome.result.metrics["train_loss"]


@pytest.fixture(scope="module")
def one_batch_of_nine(tiny_llama, text_file, tmp_path_factory) -> tuple[dict[str, torch.Tensor], float]:
    """The reference both tests compare with: plain steps of 9 rows."""
    return _trained(tiny_llama, text_file, tmp_path_factory.mktemp("nine"), batch_size=9)


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_accumulated_micro_batches_train_the_adapter_one_big_batch_trains(
    tiny_llama, text_file, tmp_path, one_batch_of_nine
):
    nine, nine_loss = one_batch_of_nine
    accumulated, accumulated_loss = _trained(tiny_llama, text_file, tmp_path, batch_size=3, grad_accum=3)
    # the same sums in another order: float32 rounding only (the last micro-batch of the epoch is short, too);
    # without accumulation, steps of 3 rows differ from steps of 9 by over 1e-3
    assert _max_difference(accumulated, nine) <= 2e-5 and abs(accumulated_loss - nine_loss) <= 1e-5


def test_gradient_checkpointing_gives_the_same_adapter(tiny_llama, text_file, tmp_path, one_batch_of_nine):
    plain, plain_loss = one_batch_of_nine
    recomputed, recomputed_loss = _trained(tiny_llama, text_file, tmp_path, batch_size=9, gradient_checkpointing=True)
    assert _max_difference(plain, recomputed) <= 1e-6 and abs(plain_loss - recomputed_loss) <= 1e-6
