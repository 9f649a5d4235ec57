"""--device / --dtype on train and eval: float32 and bfloat16 train end to end on the CPU, the adapter's weights
stay float32 whatever the base's dtype, and a GPU asked for where none is visible is a one-line error."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from adapterhub.base import resolve_placement
from adapterhub.cli import main
from adapterhub.errors import OptionError


def _train(cli_json, tiny_bert, sentiment_csv, tmp_path, *flags: str) -> dict:
    return cli_json("train", "--base", str(tiny_bert), "--method", "lora", "-o", "r=4", "-o", "target_modules=query,value",
                    "--data", str(sentiment_csv), "--label-column", "sentiment", "--epochs", "1", "--lr", "5e-3",
                    "--max-samples", "64", "--output", str(tmp_path), "--json", "--no-progress", *flags)  # fmt: skip


def test_float32_and_bfloat16_train_and_evaluate_on_cpu_with_float32_adapter_weights(cli_json, tiny_bert, sentiment_csv,
                                                                                     tmp_path):  # fmt: skip
    losses = {}
    for dtype in ("float32", "bfloat16"):
        trained = _train(cli_json, tiny_bert, sentiment_csv, tmp_path / dtype, "--device", "cpu", "--dtype", dtype,
                         "--push", dtype)  # fmt: skip
        assert trained["steps"] == 4
        losses[dtype] = trained["metrics"]["train_loss"]
        tensors = load_file(tmp_path / dtype / "adapter_model.safetensors")
        assert {t.dtype for t in tensors.values()} == {torch.float32}  # the master weights, not the base's dtype
        assert all(torch.isfinite(t).all() for t in tensors.values())
        evaluated = cli_json("eval", dtype, "--base", str(tiny_bert), "--data", str(sentiment_csv), "--device", "cpu",
                             "--dtype", dtype, "--json")  # fmt: skip
        assert evaluated["metrics"]["accuracy"] == pytest.approx(trained["metrics"]["accuracy"], abs=1e-6)
    assert losses["bfloat16"] != losses["float32"]  # the base really ran in bfloat16
    assert losses["bfloat16"] == pytest.approx(losses["float32"], abs=0.05)


def test_auto_is_cpu_float32_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_placement("auto", "auto") == (torch.device("cpu"), torch.float32)
    assert resolve_placement("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)


def test_cuda_without_a_gpu_is_a_one_line_error(tiny_bert, sentiment_csv, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(OptionError, match="no CUDA GPU"):
        resolve_placement("cuda:0", "auto")
    status = main(["train", "--base", str(tiny_bert), "--method", "lora", "--data", str(sentiment_csv),
                   "--label-column", "sentiment", "--device", "cuda", "--no-progress"])  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert status == 1 and error.startswith("error: --device cuda: no CUDA GPU") and "\n" not in error


def test_a_device_that_is_no_device_is_refused_naming_the_valid_ones(tiny_bert, sentiment_csv, capsys):
    status = main(
        ["train", "--base", str(tiny_bert), "--method", "lora", "--data", str(sentiment_csv), "--device", "gpu"]
    )
    assert status == 1 and "valid values: auto, cpu, cuda, cuda:N" in capsys.readouterr().err


def test_train_eval_serve_and_continual_train_take_the_same_device_and_dtype_flags():
    import click

    from adapterhub.cli import cli as group

    ctx = click.Context(group)
    continual = group.get_command(ctx, "continual")
    commands = [group.get_command(ctx, name) for name in ("train", "eval", "serve")] + [
        continual.get_command(ctx, "train")
    ]
    for command in commands:
        params = {p.name: p for p in command.params}
        assert params["device"].default == "auto" and params["dtype"].default == "auto", command.name
        assert list(params["dtype"].type.choices) == ["auto", "float32", "bfloat16", "float16"], command.name


def test_serve_on_a_missing_gpu_fails_before_loading_anything(tiny_llama, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["serve", "--base", str(tiny_llama), "--device", "cuda:1"]) == 1
    assert "--device cuda:1: no CUDA GPU" in capsys.readouterr().err
