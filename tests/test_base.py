"""Loading the frozen base: freezing, quantization through the plugin, fingerprints, bad paths."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from tiny_models import make_tiny_llama

from adapterhub.base import load_base
from adapterhub.errors import AdapterHubError, UnknownNameError


def test_base_is_frozen_and_in_eval_mode(tiny_llama):
    base = load_base(tiny_llama)
    assert not any(p.requires_grad for p in base.model.parameters())
    assert not base.model.training


def test_nf4_base_uses_4bit_layers_with_double_quant_and_keeps_the_fingerprint(tiny_llama):
    plain = load_base(tiny_llama)
    quantized = load_base(tiny_llama, quantize="nf4")
    q_proj = quantized.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit)
    assert q_proj.weight.quant_type == "nf4"
    assert quantized.model.config.quantization_config.bnb_4bit_use_double_quant
    assert quantized.fingerprint_id == plain.fingerprint_id
    tokens = torch.tensor([[7, 8, 9, 10]])
    with torch.no_grad():
        close = torch.nn.functional.cosine_similarity(
            quantized.model(tokens).logits.flatten(), plain.model(tokens).logits.flatten(), dim=0
        )
    assert close > 0.95  # NF4 approximates the same function


def test_int8_base_uses_8bit_layers(tiny_llama):
    quantized = load_base(tiny_llama, quantize="int8")
    assert isinstance(quantized.model.model.layers[0].mlp.up_proj, bnb.nn.Linear8bitLt)


def test_fingerprint_is_stable_and_tells_different_weights_apart(tiny_llama, tmp_path):
    first, again = load_base(tiny_llama), load_base(tiny_llama)
    other = load_base(make_tiny_llama(tmp_path / "other", seed=1))
    assert first.fingerprint == again.fingerprint
    assert first.fingerprint_id != other.fingerprint_id
    assert first.fingerprint["shape"] == other.fingerprint["shape"]


def test_unknown_quantizer_is_refused_with_the_installed_ones(tiny_llama):
    with pytest.raises(UnknownNameError, match="installed quantizers: int8, nf4"):
        load_base(tiny_llama, quantize="fp3")


def test_missing_base_path_is_a_clear_error(tmp_path):
    with pytest.raises(AdapterHubError, match="not found"):
        load_base(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterHubError, match="not a model directory"):
        load_base(tmp_path / "empty")
