"""The LoRA method plugin: options, training touches only adapter weights, bit-exact save/load, parity with peft."""

from __future__ import annotations

import json

import peft
import pytest
import torch

from adapterhub import adapters
from adapterhub.base import load_base
from adapterhub.errors import OptionError

TOKENS = torch.tensor([[7, 8, 9, 10, 11, 12]])


def trained_lora(base, **options):
    """A LoRA whose weights are non-trivial (one optimizer step on a language-model loss)."""
    model = adapters.attach(base, "lora", adapters.make_options("lora", {"r": 4, **options}))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    model(input_ids=TOKENS, labels=TOKENS).loss.backward()
    optimizer.step()
    model.eval()
    return model


def take_adamw_steps(model, steps: int) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        model(input_ids=TOKENS, labels=TOKENS).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_options_reach_the_peft_config(tiny_llama):
    base = load_base(tiny_llama)
    options = adapters.make_options("lora", {"r": "16", "alpha": "8", "rslora": "true", "dora": "true",
                                             "target_modules": "q_proj,v_proj", "dropout": "0"})  # fmt: skip
    model = adapters.attach(base, "lora", options)
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.use_rslora, config.use_dora) == (16, 8, True, True)
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    assert any("lora_magnitude_vector" in name for name, _ in model.named_parameters())


def test_unknown_or_bad_option_names_the_option():
    with pytest.raises(OptionError, match="unknown option 'rank' for method 'lora'.*valid options: .*alpha"):
        adapters.make_options("lora", {"rank": 4})
    with pytest.raises(OptionError, match="option 'r': bad value 'four'"):
        adapters.make_options("lora", {"r": "four"})


def test_train_step_changes_only_adapter_weights(tiny_llama):
    base = load_base(tiny_llama)
    frozen_before = {k: v.clone() for k, v in base.model.state_dict().items()}
    model = adapters.attach(base, "lora", adapters.make_options("lora", {"r": 4}))
    adapter_before = {k: v.clone() for k, v in adapters.get_peft_model_state_dict(model).items()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    take_adamw_steps(model, 2)
    after = adapters.get_peft_model_state_dict(model)
    assert all(not torch.equal(adapter_before[k], after[k]) for k in after)
    for name, tensor in model.get_base_model().state_dict().items():
        if "lora_" in name:
            continue
        original = name.replace(".base_layer.", ".")
        assert torch.equal(tensor, frozen_before[original]), name


def test_save_and_load_are_bit_exact(tiny_llama, tmp_path):
    model = trained_lora(load_base(tiny_llama), dora=True)
    expected_logits = model(TOKENS).logits
    base = load_base(tiny_llama)
    adapters.save_adapter(
        model, tmp_path / "adapter", adapters.build_manifest(base, "lora", adapters.make_options("lora"))
    )
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "adapterhub.json"]  # fmt: skip
    loaded = adapters.load_adapter_dir(base, tmp_path / "adapter")
    saved, reloaded = adapters.get_peft_model_state_dict(model), adapters.get_peft_model_state_dict(loaded)
    assert saved.keys() == reloaded.keys()
    assert all(torch.equal(saved[k], reloaded[k]) for k in saved)
    assert torch.equal(loaded(TOKENS).logits, expected_logits)


def test_manifest_records_method_options_and_base(tiny_llama, tmp_path):
    base = load_base(tiny_llama)
    options = adapters.make_options("lora", {"r": 2})
    model = adapters.attach(base, "lora", options)
    adapters.save_adapter(model, tmp_path, adapters.build_manifest(base, "lora", options))
    manifest = json.loads((tmp_path / "adapterhub.json").read_text())
    assert manifest["method"] == "lora" and manifest["options"]["r"] == 2
    assert manifest["base"]["fingerprint"] == base.fingerprint_id


def test_lora_matches_plain_peft_for_the_same_config_and_seed(tiny_llama):
    base = load_base(tiny_llama)
    torch.manual_seed(3)
    ours = adapters.attach(base, "lora", adapters.make_options("lora", {"r": 4, "target_modules": "q_proj,v_proj"}))
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    reference = peft.get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama),
        peft.LoraConfig(
            task_type="CAUSAL_LM", r=4, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]
        ),
    )
    ours_sd, ref_sd = adapters.get_peft_model_state_dict(ours), adapters.get_peft_model_state_dict(reference)
    assert ours_sd.keys() == ref_sd.keys()
    assert all(torch.equal(ours_sd[k], ref_sd[k]) for k in ours_sd)


def test_lora_trains_on_an_nf4_base(tiny_llama):
    base = load_base(tiny_llama, quantize="nf4")
    model = adapters.attach(base, "lora", adapters.make_options("lora", {"r": 4}))
    before = {k: v.clone() for k, v in adapters.get_peft_model_state_dict(model).items()}
    take_adamw_steps(model, 2)
    after = adapters.get_peft_model_state_dict(model)
    assert any(not torch.equal(before[k], after[k]) for k in after)
