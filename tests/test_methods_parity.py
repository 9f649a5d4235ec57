"""Where peft has the method, our plugin gives exactly what plain peft gives for the same config and seed:
equal adapter state dicts after init and equal logits (tiny Llama, causal LM)."""

from __future__ import annotations

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM

from adapterhub import adapters
from adapterhub.base import load_base

TOKENS = torch.tensor([[7, 8, 9, 10, 11, 12]])

CASES = {
    "ia3": ({}, lambda p: peft.IA3Config(task_type="CAUSAL_LM")),
    "adalora": (
        {"total_step": 20},
        lambda p: peft.AdaLoraConfig(
            task_type="CAUSAL_LM", init_r=12, target_r=4, lora_alpha=16, lora_dropout=0.05, total_step=20,
            tinit=2, tfinal=4, deltaT=1, beta1=0.85, beta2=0.85, orth_reg_weight=0.5,
        ),  # fmt: skip
    ),
    "prompt_tuning": ({"num_virtual_tokens": 5}, lambda p: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)),
    "prompt_tuning_text_init": (
        {"num_virtual_tokens": 5, "init": "text", "init_text": "great movie"},
        lambda p: peft.PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=5, prompt_tuning_init="TEXT",
            prompt_tuning_init_text="great movie", tokenizer_name_or_path=str(p),
        ),  # fmt: skip
    ),
    "prefix_tuning": ({"num_virtual_tokens": 5}, lambda p: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)),
    "prefix_tuning_projection": (
        {"num_virtual_tokens": 5, "projection": True, "projection_hidden_size": 32},
        lambda p: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, prefix_projection=True, encoder_hidden_size=32),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_plugin_matches_plain_peft_for_the_same_config_and_seed(case, tiny_llama):
    options, reference_config = CASES[case]
    method = case.replace("_text_init", "").replace("_projection", "")
    base = load_base(tiny_llama)
    torch.manual_seed(5)
    ours = adapters.attach(base, method, adapters.make_options(method, options))
    torch.manual_seed(5)
    reference = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), reference_config(tiny_llama))

    ours_sd, ref_sd = adapters.get_peft_model_state_dict(ours), adapters.get_peft_model_state_dict(reference)
    assert ours_sd.keys() == ref_sd.keys() and ours_sd
    assert all(torch.equal(ours_sd[k], ref_sd[k]) for k in ours_sd)
    ours.eval(), reference.eval()
    with torch.no_grad():
        assert torch.equal(ours(input_ids=TOKENS).logits, reference(input_ids=TOKENS).logits)
