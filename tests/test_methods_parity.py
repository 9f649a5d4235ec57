"""Where peft has the method, our plugin gives exactly what plain peft gives for the same config and seed:
equal adapter state dicts after init and equal logits, and equal adapter tensors after 20 steps of
adapterhub's training loop against a plain peft + torch loop with the same optimizer, schedule, clipping,
seed and data (tiny Llama, causal LM; dropout 0, so both runs are deterministic)."""

from __future__ import annotations

import math
import random

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM

from adapterhub import adapters, plugins
from adapterhub.base import load_base
from adapterhub.batches import block_batches
from adapterhub.train import TrainSettings, train

TOKENS = torch.tensor([[7, 8, 9, 10, 11, 12]])
STEPS = 20
SETTINGS = TrainSettings(epochs=2, batch_size=4, learning_rate=1e-2, warmup_ratio=0.1, grad_clip=1.0, seed=3)
N_BLOCKS = STEPS // SETTINGS.epochs * SETTINGS.batch_size  # 10 steps per epoch
# max |ours - reference| of any adapter tensor after 20 steps; measured 0 (bitwise equal) on CPU, while a 1%
# change of the reference's learning rate moves some tensor of every case by at least 9e-4
TRAINED_TOLERANCE = 1e-5

CASES = {
    "lora": (
        {"r": 4, "dropout": 0, "target_modules": "q_proj,v_proj"},
        lambda p: peft.LoraConfig(
            task_type="CAUSAL_LM", r=4, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]
        ),
    ),
    "ia3": ({}, lambda p: peft.IA3Config(task_type="CAUSAL_LM")),
    "adalora": (
        {"total_step": STEPS, "dropout": 0},
        lambda p: peft.AdaLoraConfig(
            task_type="CAUSAL_LM",
            init_r=12,
            target_r=4,
            lora_alpha=16,
            lora_dropout=0.0,
            total_step=STEPS,
            tinit=2,
            tfinal=4,
            deltaT=1,
            beta1=0.85,
            beta2=0.85,
            orth_reg_weight=0.5,
        ),  # fmt: skip
    ),
    "prompt_tuning": (
        {"num_virtual_tokens": 5},
        lambda p: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
    ),
    "prompt_tuning_text_init": (
        {"num_virtual_tokens": 5, "init": "text", "init_text": "great movie"},
        lambda p: peft.PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=5,
            prompt_tuning_init="TEXT",
            prompt_tuning_init_text="great movie",
            tokenizer_name_or_path=str(p),
        ),  # fmt: skip
    ),
    "prefix_tuning": (
        {"num_virtual_tokens": 5},
        lambda p: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
    ),
    "prefix_tuning_projection": (
        {"num_virtual_tokens": 5, "projection": True, "projection_hidden_size": 32},
        lambda p: peft.PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=5, prefix_projection=True, encoder_hidden_size=32
        ),
    ),
}


def both_models(case: str, tiny_llama):
    """``(method, ours, reference)``: the same adapter attached by our plugin and by plain peft, same seed."""
    options, reference_config = CASES[case]
    method = case.replace("_text_init", "").replace("_projection", "")
    base = load_base(tiny_llama)
    torch.manual_seed(5)
    ours = adapters.attach(base, method, adapters.make_options(method, options))
    torch.manual_seed(5)
    reference = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), reference_config(tiny_llama))
    return method, ours, reference


@pytest.mark.parametrize("case", sorted(CASES))
def test_plugin_matches_plain_peft_for_the_same_config_and_seed(case, tiny_llama):
    _, ours, reference = both_models(case, tiny_llama)

    ours_sd, ref_sd = adapters.get_peft_model_state_dict(ours), adapters.get_peft_model_state_dict(reference)
    assert ours_sd.keys() == ref_sd.keys() and ours_sd
    assert all(torch.equal(ours_sd[k], ref_sd[k]) for k in ours_sd)
    ours.eval(), reference.eval()
    with torch.no_grad():
        assert torch.equal(ours(input_ids=TOKENS).logits, reference(input_ids=TOKENS).logits)


def token_blocks() -> list[list[int]]:
    """Equal-length blocks of random word ids (no padding, so the reference needs no collator)."""
    rng = random.Random(0)
    return [[rng.randrange(7, 40) for _ in range(12)] for _ in range(N_BLOCKS)]


def train_plain_peft(model: peft.PeftModel, blocks: list[list[int]], settings: TrainSettings, adalora: bool) -> None:
    """What a peft user writes: AdamW on the trainable parameters, linear warm-up then linear decay, gradient
    clipping, the same shuffled order per epoch; AdaLoRA's ``update_and_allocate`` after each optimizer step."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    total = math.ceil(len(blocks) / settings.batch_size) * settings.epochs
    warmup = max(1, int(total * settings.warmup_ratio))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    generator, step = torch.Generator().manual_seed(settings.seed), 0
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(blocks), generator=generator).tolist()
        for start in range(0, len(blocks), settings.batch_size):
            ids = torch.tensor([blocks[i] for i in order[start : start + settings.batch_size]])
            model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
            optimizer.step()
            schedule.step()
            step += 1
            if adalora:
                model.base_model.update_and_allocate(step)
            optimizer.zero_grad()


@pytest.mark.parametrize("case", sorted(CASES))
def test_plugin_trains_like_plain_peft_for_20_steps(case, tiny_llama):
    method, ours, reference = both_models(case, tiny_llama)
    blocks = token_blocks()
    before = {k: v.clone() for k, v in adapters.get_peft_model_state_dict(ours).items()}
    on_step = plugins.catalog().method(method).on_train_step
    result = train(ours, lambda rows: block_batches(blocks, 0, len(rows), rows), len(blocks), None, "causal-lm",
                   SETTINGS, on_step, progress=False)  # fmt: skip
    train_plain_peft(reference, blocks, SETTINGS, adalora=method == "adalora")

    assert result.steps == STEPS
    ours_sd, ref_sd = adapters.get_peft_model_state_dict(ours), adapters.get_peft_model_state_dict(reference)
    assert ours_sd.keys() == ref_sd.keys() == before.keys()
    assert any(not torch.equal(ours_sd[k], before[k]) for k in ours_sd)  # training moved the adapter
    worst = max(float((ours_sd[k] - ref_sd[k]).abs().max()) for k in ours_sd)
    assert worst <= TRAINED_TOLERANCE, f"max |ours - plain peft| = {worst:.3g}"
