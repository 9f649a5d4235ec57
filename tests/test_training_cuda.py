"""Training on a CUDA GPU (``pytest -m cuda``; skipped without one): bfloat16 end to end through the command
line, the fused Triton LoRA kernel reached from a base placed before attach (and training like peft's own
forward), and an NF4 base. Tolerances: bfloat16 runs compared at 6e-2 on O(0.01) adapter weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

LORA = ["--method", "lora", "-o", "r=4", "-o", "dropout=0", "-o", "target_modules=q_proj,v_proj"]


def _train(cli_json, tiny_llama, text_file, output, *flags: str) -> dict:
    return cli_json("train", "--base", str(tiny_llama), "--model-task", "causal-lm", *LORA, "--data", str(text_file),
                    "--epochs", "1", "--block-size", "16", "--output", str(output), "--json", "--no-progress", *flags)  # fmt: skip


def test_auto_places_the_base_on_the_gpu_in_bfloat16_and_trains_float32_adapter_weights(
    cli_json, tiny_llama, text_file, tmp_path
):
    from adapterhub.base import resolve_placement

    if torch.cuda.is_bf16_supported():
        assert resolve_placement("auto", "auto") == (torch.device("cuda:0"), torch.bfloat16)
    trained = _train(cli_json, tiny_llama, text_file, tmp_path / "gpu", "--device", "cuda", "--dtype", "bfloat16")
    assert trained["steps"] > 0 and trained["peak_memory_mb"] > 0
    tensors = load_file(tmp_path / "gpu" / "adapter_model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float32} and all(
        torch.isfinite(t).all() for t in tensors.values()
    )


def test_float16_training_with_a_gradient_scaler_stays_finite(cli_json, tiny_llama, text_file, tmp_path):
    trained = _train(cli_json, tiny_llama, text_file, tmp_path / "fp16", "--device", "cuda", "--dtype", "float16")
    assert trained["skipped_steps"] == 0
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "fp16" / "adapter_model.safetensors").values())


def test_the_fused_lora_kernel_is_reached_from_train_and_trains_like_peft(tiny_llama, text_file):
    pytest.importorskip("triton")
    from adapterhub_lora.dispatch import _MARK, unpatch_lora_model

    from adapterhub import adapters
    from adapterhub.base import load_base
    from adapterhub.prepare import prepare
    from adapterhub.settings import DataSpec, TrainSettings
    from adapterhub.train import seed_everything, train

    settings = TrainSettings(epochs=1, batch_size=8, block_size=16, learning_rate=1e-2)
    trained = {}
    for path in ("fused", "peft"):
        seed_everything(0)
        base = load_base(tiny_llama, model_task="causal-lm", device="cuda", dtype=torch.bfloat16)
        model = adapters.attach(
            base, "lora", adapters.make_options("lora", {"r": "4", "dropout": "0", "target_modules": "q_proj,v_proj"})
        )
        dispatched = sum(hasattr(m, _MARK) for m in model.modules())
        if path == "fused":
            assert dispatched > 0  # the kernel saw the GPU at attach time: the base was placed first
        else:
            unpatch_lora_model(model)
        data = prepare(base, DataSpec(str(text_file)), settings)
        train(model, data.make_train, data.n_train, None, "causal-lm", settings, progress=False, dtype=torch.bfloat16)
        trained[path] = {n: p.detach().float().cpu() for n, p in model.named_parameters() if p.requires_grad}
    for name, weight in trained["peft"].items():
        torch.testing.assert_close(trained["fused"][name], weight, atol=6e-2, rtol=6e-2)


def test_an_nf4_base_trains_on_the_gpu(cli_json, tiny_llama, text_file, tmp_path):
    pytest.importorskip("bitsandbytes")
    trained = _train(cli_json, tiny_llama, text_file, tmp_path / "nf4", "--quantize", "nf4", "--device", "cuda")
    assert trained["steps"] > 0
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "nf4" / "adapter_model.safetensors").values())
