"""AdaLoRA: the training loop runs peft's rank reallocation every step, the registry keeps the final rank
pattern, and a pulled adapter is rebuilt with exactly those ranks."""

from __future__ import annotations

import pytest
import torch

from adapterhub import adapters
from adapterhub.base import load_base
from adapterhub.errors import OptionError
from adapterhub.train import TrainSettings
from adapterhub.workflow import DataSpec, TrainJob, evaluate_adapter, train_adapter
from adapterhub_registry import Registry


def test_ranks_are_reallocated_in_training_and_rebuilt_exactly_from_the_registry(tiny_bert, sentiment_csv, tmp_path):
    data = DataSpec(str(sentiment_csv), label_column="sentiment", dedupe=True)
    settings = TrainSettings(epochs=1, batch_size=8, learning_rate=1e-2, max_length=16)
    outcome = train_adapter(TrainJob(
        str(tiny_bert), "adalora", data, options={"init_r": 6, "target_r": 2, "target_modules": ["query", "value", "key"]},
        settings=settings, push="ada", registry_root=str(tmp_path), progress=False,
    ))  # fmt: skip
    steps = outcome.result.steps
    assert outcome.manifest.options["total_step"] == steps  # filled in from the run's length

    record, tensors = Registry(tmp_path).load("ada")
    pattern = record.peft_config["rank_pattern"]
    ranks = {key: sum(mask) for key, mask in pattern.items()}
    assert len(ranks) == 2 * 3  # two layers x (query, key, value)
    assert sum(ranks.values()) == 2 * len(ranks)  # the budget shrank from init_r=6 to target_r=2 on average
    assert len(set(ranks.values())) > 1  # and was spread unevenly by importance

    base = load_base(tiny_bert, model_task="seq-cls", labels=record.manifest["labels"])
    model = adapters.load_adapter(base, record.peft_config, tensors, adapter_base=record.base_fingerprint)
    for key, rank in ranks.items():
        module = model.get_base_model().get_submodule(key.removesuffix(".lora_E"))
        assert module.lora_E["default"].shape[0] == rank, key
        assert module.lora_A["default"].shape[0] == rank and module.lora_B["default"].shape[1] == rank

    evaluated = evaluate_adapter("ada", str(tiny_bert), data, registry_root=str(tmp_path))
    assert evaluated["accuracy"] == pytest.approx(outcome.result.metrics["accuracy"], abs=1e-12)


def test_schedule_options_are_checked_against_the_run_length(tiny_llama):
    base = load_base(tiny_llama)
    with pytest.raises(OptionError, match="needs option 'total_step'"):
        adapters.attach(base, "adalora", adapters.make_options("adalora"))
    with pytest.raises(OptionError, match="'warmup_fraction' and 'final_fraction' leave no steps"):
        adapters.attach(
            base,
            "adalora",
            adapters.make_options("adalora", {"total_step": 10, "warmup_fraction": 0.6, "final_fraction": 0.5}),
        )


def test_reallocation_hook_masks_ranks_once_the_budget_is_final(tiny_llama):
    base = load_base(tiny_llama)
    options = adapters.make_options(
        "adalora", {"total_step": 4, "warmup_fraction": 0, "final_fraction": 0.5, "init_r": 4, "target_r": 1}
    )
    model = adapters.attach(base, "adalora", options)
    spec_hook = __import__("adapterhub").plugins.catalog().method("adalora").on_train_step
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    tokens = torch.tensor([[7, 8, 9, 10, 11, 12]])
    for step in range(1, 5):
        model(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()
        spec_hook(model, step, 4)
        optimizer.zero_grad()
    pattern = model.peft_config["default"].rank_pattern
    assert pattern and sum(sum(mask) for mask in pattern.values()) == len(pattern)  # target_r=1 on average
