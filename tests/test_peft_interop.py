"""The registry speaks PEFT: exports load with peft.PeftModel.from_pretrained, PEFT directories import whole,
and an adapter is refused on a base it was not trained on."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from safetensors.torch import load_file
from test_lora import TOKENS, trained_lora
from tiny_models import make_tiny_llama
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from adapterhub import adapters
from adapterhub.base import load_base
from adapterhub.errors import AdapterHubError, IncompatibleBaseError
from adapterhub.peft_import import import_peft
from adapterhub_registry import Registry


@pytest.fixture
def pushed_lora(tiny_llama, tmp_path):
    base = load_base(tiny_llama)
    model = trained_lora(base)
    adapters.save_adapter(
        model, tmp_path / "trained", adapters.build_manifest(base, "lora", adapters.make_options("lora"))
    )
    registry = Registry()
    record = registry.push("tiny-lora", tmp_path / "trained", method="lora", base_fingerprint=base.fingerprint_id)
    return registry, record, model(TOKENS).logits


def test_export_loads_unchanged_in_peft_with_equal_logits(pushed_lora, tiny_llama, tmp_path):
    registry, record, expected = pushed_lora
    registry.export_peft(record.ref, tmp_path / "export")
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model = peft.PeftModel.from_pretrained(plain, tmp_path / "export").eval()
    assert torch.equal(model(TOKENS).logits, expected)


def test_registry_adapter_loads_back_with_equal_logits(pushed_lora, tiny_llama):
    registry, record, expected = pushed_lora
    stored, tensors = registry.load("tiny-lora")
    model = adapters.load_adapter(
        load_base(tiny_llama), stored.peft_config, tensors, adapter_base=stored.base_fingerprint
    )
    assert torch.equal(model(TOKENS).logits, expected)


def test_adapter_for_another_base_is_refused_naming_both(pushed_lora, tmp_path):
    registry, record, _ = pushed_lora
    other = load_base(make_tiny_llama(tmp_path / "other", seed=5))
    stored, tensors = registry.load(record.ref)
    with pytest.raises(IncompatibleBaseError, match=f"{record.base_fingerprint}.*{other.fingerprint_id}"):
        adapters.load_adapter(
            other, stored.peft_config, tensors, adapter_base=stored.base_fingerprint, label=record.ref
        )
    forced = adapters.load_adapter(other, stored.peft_config, tensors, adapter_base=stored.base_fingerprint, force=True)
    assert forced(TOKENS).logits.shape[-1] == other.model.config.vocab_size


def test_import_of_a_peft_saved_adapter_keeps_every_tensor_and_config_field(tiny_bert, tmp_path):
    torch.manual_seed(0)
    plain = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    config = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"], use_rslora=True)
    model = peft.get_peft_model(plain, config)
    for parameter in model.parameters():
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.1)
    model.save_pretrained(tmp_path / "peft-dir")
    written_config = json.loads((tmp_path / "peft-dir" / "adapter_config.json").read_text())
    written_tensors = load_file(tmp_path / "peft-dir" / "adapter_model.safetensors")

    registry = Registry()
    record = import_peft(registry, tmp_path / "peft-dir", "imported", base=str(tiny_bert))
    assert (
        record.method == "lora"
        and record.base_fingerprint == load_base(tiny_bert, model_task="seq-cls", labels=["a", "b", "c"]).fingerprint_id
    )
    assert record.peft_config == written_config
    _, tensors = registry.load("imported")
    assert tensors.keys() == written_tensors.keys()
    assert all(torch.equal(tensors[k], written_tensors[k]) for k in tensors)

    registry.export_peft("imported", tmp_path / "round-trip")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "round-trip" / name).read_bytes() == (tmp_path / "peft-dir" / name).read_bytes()

    base = load_base(tiny_bert, model_task="seq-cls", labels=record.manifest["labels"])
    ours = adapters.load_adapter(base, record.peft_config, tensors, adapter_base=record.base_fingerprint)
    batch = {"input_ids": torch.tensor([[2, 9, 10, 11, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    model.eval()
    assert torch.equal(ours(**batch).logits, model(**batch).logits)


def test_import_refuses_an_adapter_whose_targets_the_base_lacks(tiny_llama, tiny_bert, tmp_path):
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama)
    peft.get_peft_model(plain, peft.LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj"])).save_pretrained(
        tmp_path / "llama-lora"
    )
    with pytest.raises(AdapterHubError, match="does not fit this base.*q_proj"):
        import_peft(Registry(), tmp_path / "llama-lora", "mismatch", base=str(tiny_bert))
    assert Registry().list() == []
