"""Bottleneck adapters (Houlsby, Pfeiffer): placement, near-identity init, reduction factor, training, and
bit-exact round trips through our registry and through plain ``peft.PeftModel.from_pretrained``."""

from __future__ import annotations

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from adapterhub import adapters
from adapterhub.base import load_base
from adapterhub.errors import OptionError
from adapterhub_registry import Registry

TOKENS = torch.tensor([[7, 8, 9, 10, 11, 12]])


def bases(tiny_bert, tiny_llama):
    return {
        "bert": lambda: load_base(tiny_bert, model_task="seq-cls", labels=["neg", "pos"]),
        "llama": lambda: load_base(tiny_llama),
    }


def adapted_modules(model) -> list[str]:
    return sorted(name.removeprefix("base_model.model.") for name, module in model.named_modules()
                  if type(module).__name__ == "BottleneckLayer")  # fmt: skip


def trained(base, **options):
    """A bottleneck adapter after two optimizer steps, so its up-projections are no longer zero."""
    model = adapters.attach(base, "bottleneck", adapters.make_options("bottleneck", options))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    labels = TOKENS if base.model_task == "causal-lm" else torch.tensor([1])
    for _ in range(2):
        model(input_ids=TOKENS, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.mark.parametrize(
    "arch, variant, expected",
    [
        ("bert", "houlsby", ["bert.encoder.layer.{i}.attention.output.dense", "bert.encoder.layer.{i}.output.dense"]),
        ("bert", "pfeiffer", ["bert.encoder.layer.{i}.output.dense"]),
        ("llama", "houlsby", ["model.layers.{i}.mlp.down_proj", "model.layers.{i}.self_attn.o_proj"]),
        ("llama", "pfeiffer", ["model.layers.{i}.mlp.down_proj"]),
    ],
)
def test_houlsby_follows_attention_and_ffn_pfeiffer_only_ffn(arch, variant, expected, tiny_bert, tiny_llama):
    model = adapters.attach(
        bases(tiny_bert, tiny_llama)[arch](), "bottleneck", adapters.make_options("bottleneck", {"variant": variant})
    )
    assert adapted_modules(model) == sorted(name.format(i=i) for i in range(2) for name in expected)


def test_fresh_adapter_is_the_identity(tiny_llama):
    base = load_base(tiny_llama)
    with torch.no_grad():
        expected = base.model(input_ids=TOKENS).logits
        model = adapters.attach(base, "bottleneck", adapters.make_options("bottleneck"))
        assert torch.equal(model(input_ids=TOKENS).logits, expected)


def test_reduction_factor_sets_the_bottleneck_width(tiny_llama):
    model = adapters.attach(
        load_base(tiny_llama), "bottleneck", adapters.make_options("bottleneck", {"reduction_factor": "8"})
    )
    layer = model.get_base_model().model.layers[0].mlp.down_proj
    assert layer.bottleneck_down["default"].weight.shape == (64 // 8, 64)  # hidden 64 -> 8 -> 64
    assert layer.bottleneck_up["default"].weight.shape == (64, 64 // 8)


def test_training_changes_only_adapter_weights(tiny_llama):
    base = load_base(tiny_llama)
    frozen = {k: v.clone() for k, v in base.model.state_dict().items()}
    model = trained(base, variant="houlsby")
    assert all(torch.count_nonzero(p) for n, p in model.named_parameters() if "bottleneck_up" in n and "weight" in n)
    for name, tensor in model.get_base_model().state_dict().items():
        if "bottleneck_" not in name:
            assert torch.equal(tensor, frozen[name.replace(".base_layer.", ".")]), name


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_registry_and_peft_round_trips_are_bit_exact(arch, tiny_bert, tiny_llama, tmp_path):
    make_base = bases(tiny_bert, tiny_llama)[arch]
    base = make_base()
    options = adapters.make_options("bottleneck", {"variant": "houlsby", "non_linearity": "gelu"})
    model = trained(base, **vars(options))
    with torch.no_grad():
        expected = model(input_ids=TOKENS).logits
    adapters.save_adapter(model, tmp_path / "adapter", adapters.build_manifest(base, "bottleneck", options))
    registry = Registry(tmp_path / "registry")
    registry.push("bn", tmp_path / "adapter", method="bottleneck", base_fingerprint=base.fingerprint_id)

    record, tensors = registry.load("bn")
    assert record.peft_config["peft_type"] == "BOTTLENECK"
    loaded = adapters.load_adapter(make_base(), record.peft_config, tensors, adapter_base=record.base_fingerprint,
                                   manifest=record.manifest)  # fmt: skip
    saved, reloaded = adapters.get_peft_model_state_dict(model), adapters.get_peft_model_state_dict(loaded)
    assert saved.keys() == reloaded.keys() and all(torch.equal(saved[k], reloaded[k]) for k in saved)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=TOKENS).logits, expected)

    registry.export_peft("bn", tmp_path / "exported")
    plain_class = AutoModelForSequenceClassification if arch == "bert" else AutoModelForCausalLM
    plain = plain_class.from_pretrained(base.source, **({"num_labels": 2} if arch == "bert" else {}))
    from_peft = peft.PeftModel.from_pretrained(plain, tmp_path / "exported").eval()
    with torch.no_grad():
        assert torch.equal(from_peft(input_ids=TOKENS).logits, expected)


def test_bad_variant_or_activation_names_the_option(tiny_llama):
    base = load_base(tiny_llama)
    with pytest.raises(OptionError, match="option 'variant': bad value 'adapterdrop'"):
        adapters.attach(base, "bottleneck", adapters.make_options("bottleneck", {"variant": "adapterdrop"}))
    with pytest.raises(OptionError, match="option 'non_linearity': bad value 'swish'"):
        adapters.attach(base, "bottleneck", adapters.make_options("bottleneck", {"non_linearity": "swish"}))


def test_merging_a_non_linear_adapter_is_refused(tiny_llama):
    model = adapters.attach(load_base(tiny_llama), "bottleneck", adapters.make_options("bottleneck"))
    with pytest.raises(ValueError, match="non-linear and cannot be merged"):
        model.merge_and_unload()
