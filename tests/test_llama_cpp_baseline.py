"""llama.cpp as the serving benchmark's CPU peer (benchmarks/llama_cpp_baseline.py, suite serving_llamacpp).

What runs without llama.cpp: the conversion's input is checked (the registry's PEFT export is what llama.cpp's
converter reads; other methods and a base without its config are refused, naming why), and the suite skips with the
reason when llama.cpp is not there. With a llama.cpp source tree in LLAMA_CPP_DIR, its converter turns our exported
LoRA into a GGUF LoRA holding the same numbers; with llama-server built too, the server answers with the adapter a
request selects. Those two skip, saying so, where llama.cpp is absent (CI: it takes 20+ minutes to build).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks import llama_cpp_baseline, loadgen
from benchmarks.suites import BenchmarkError, SuiteUnavailable


def _export(tiny_llama: Path, tmp_path: Path, method: str, options: dict) -> Path:
    """An adapter of `method` on the tiny Llama, pushed to a registry and exported as the PEFT directory a user has."""
    from adapterhub import adapters
    from adapterhub.base import load_base
    from adapterhub_registry import Registry

    base = load_base(str(tiny_llama), model_task="causal-lm")
    made = adapters.make_options(method, options)
    model = adapters.attach(base, method, made)
    saved = adapters.save_adapter(model, tmp_path / "saved", adapters.build_manifest(base, method, made))
    registry = Registry(tmp_path / "registry")
    registry.push("x", saved, method=method, base_fingerprint=base.fingerprint_id)
    exported = registry.export_peft("x", tmp_path / "exported")
    registry.close()
    return exported


LORA = {"r": 4, "alpha": 8, "target_modules": ["all-linear"]}


def test_the_registry_export_of_a_lora_is_what_the_converter_reads(tiny_llama, tmp_path):
    exported = _export(tiny_llama, tmp_path, "lora", LORA)
    config = llama_cpp_baseline.check_conversion_input(exported, tiny_llama)
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    projections = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
    assert projections == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_conversion_refuses_a_method_llama_cpp_cannot_apply_naming_it(tiny_llama, tmp_path):
    exported = _export(tiny_llama, tmp_path, "prompt_tuning", {"num_virtual_tokens": 4})
    with pytest.raises(BenchmarkError, match="PROMPT_TUNING adapter; llama.cpp's server applies plain LoRA only"):
        llama_cpp_baseline.check_conversion_input(exported, tiny_llama)


def test_conversion_refuses_a_base_without_its_config_and_a_directory_without_the_peft_files(tiny_llama, tmp_path):
    exported = _export(tiny_llama, tmp_path, "lora", LORA)
    with pytest.raises(BenchmarkError, match="no config.json naming the model's architectures"):
        llama_cpp_baseline.check_conversion_input(exported, tmp_path / "saved")
    with pytest.raises(BenchmarkError, match="is not a PEFT adapter directory"):
        llama_cpp_baseline.check_conversion_input(tmp_path, tiny_llama)


def test_without_llama_cpp_the_locator_says_what_is_missing_and_where_it_comes_from(tmp_path):
    with pytest.raises(SuiteUnavailable, match="set LLAMA_CPP_DIR"):
        llama_cpp_baseline.locate({})
    with pytest.raises(SuiteUnavailable, match="is not a llama.cpp source tree"):
        llama_cpp_baseline.locate({"LLAMA_CPP_DIR": str(tmp_path)})
    (tmp_path / llama_cpp_baseline.CONVERTER).write_text("")
    (tmp_path / "gguf-py" / "gguf").mkdir(parents=True)
    with pytest.raises(SuiteUnavailable, match="no llama-server binary.*cmake --build build --target llama-server"):
        llama_cpp_baseline.locate({"LLAMA_CPP_DIR": str(tmp_path), "PATH": ""})


def test_the_suite_is_skipped_with_the_reason_when_llama_cpp_is_absent(monkeypatch, tmp_path):
    from benchmarks.cli import bench_command

    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    alone = CliRunner().invoke(bench_command, ["serving_llamacpp", "--output", str(tmp_path)])
    assert alone.exit_code == 1 and "set LLAMA_CPP_DIR" in alone.output
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written


def test_the_request_body_selects_the_adapter_by_its_lora_position():
    body = llama_cpp_baseline.lora_body(["a0", "a1", "a2"])
    planned = loadgen.PlannedRequest(3, 0.5, "a2", " hello", 1, 7)
    sent = body(planned, 10)
    assert sent["lora"] == [{"id": 2, "scale": 1.0}]
    assert {k: v for k, v in sent.items() if k != "lora"} == loadgen.request_body(planned, 10)
    with pytest.raises(BenchmarkError, match="'b0', which is none of llama-server's --lora adapters"):
        body(loadgen.PlannedRequest(0, 0.0, "b0", " hello", 1, 7), 0)


def _tree() -> Path:
    try:
        return llama_cpp_baseline.source_tree()
    except SuiteUnavailable as exc:
        pytest.skip(str(exc))


def test_llama_cpp_converter_writes_our_exported_lora_with_the_same_numbers(tiny_llama, tmp_path):
    import gguf
    import numpy
    from safetensors.numpy import load_file

    tree = _tree()
    exported = _export(tiny_llama, tmp_path, "lora", LORA)
    out = llama_cpp_baseline.convert_lora(tree, exported, tiny_llama, tmp_path / "x.gguf")
    reader = gguf.GGUFReader(out)
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 8.0
    ours = load_file(exported / "adapter_model.safetensors")
    theirs = {t.name: numpy.asarray(t.data) for t in reader.tensors}
    assert len(theirs) == len(ours) == 2 * 7 * 2  # 2 layers, 7 projections, A and B
    # down_proj and v_proj are not permuted (q and k are, for llama.cpp's rotary layout): the same numbers
    for layer in range(2):
        for peft_name, gguf_name in (("mlp.down_proj", "ffn_down"), ("self_attn.v_proj", "attn_v")):
            for part in ("A", "B"):
                key = f"base_model.model.model.layers.{layer}.{peft_name}.lora_{part}.weight"
                numpy.testing.assert_array_equal(
                    theirs[f"blk.{layer}.{gguf_name}.weight.lora_{part.lower()}"], ours[key]
                )


@pytest.mark.integration
@pytest.mark.slow
def test_llama_server_applies_the_lora_a_request_selects_as_peft_does(tmp_path):
    """SmolLM2's GGUF with one converted LoRA (B drawn at random, as after training), selected by the request body
    the suite sends: the shift it makes in the first token's top log-probabilities follows the one peft makes on the
    float32 base (q and k go through llama.cpp's rotary permutation, so a wrong conversion would not), and at scale 0
    the base's first choice comes back (Q4_1 with 8-bit activations against float32: log-probabilities differ by
    up to ~0.4 further down the list, so only the top is compared)."""
    import httpx
    import numpy
    import torch

    from adapterhub import adapters
    from adapterhub.base import load_base
    from benchmarks import models
    from benchmarks.suites.serving import _free_port

    try:
        llama = llama_cpp_baseline.locate()
    except SuiteUnavailable as exc:
        pytest.skip(str(exc))
    model = models.smollm2_gguf()
    base = load_base(str(model), model_task="causal-lm")
    options = adapters.make_options("lora", {"r": 8, "alpha": 16, "target_modules": ["all-linear"]})
    torch.manual_seed(0)
    peft_model = adapters.attach(base, "lora", options)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.1)
    saved = adapters.save_adapter(peft_model, tmp_path / "lora", adapters.build_manifest(base, "lora", options))
    prompt = " The capital of France is"
    ids = base.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        with_peft = torch.log_softmax(peft_model(ids).logits[0, -1], -1)
        with peft_model.disable_adapter():
            without = torch.log_softmax(peft_model(ids).logits[0, -1], -1)
    lora = llama_cpp_baseline.convert_lora(
        llama.source, saved, models.transformers_dir(str(model)), tmp_path / "l.gguf"
    )
    port = _free_port()
    command = llama_cpp_baseline.server_command(llama, model, [lora], port, threads=1, parallel=1, row_tokens=256)
    with (tmp_path / "server.log").open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        planned = loadgen.PlannedRequest(0, 0.0, "l", prompt, 6, 1)

        def top(body: dict) -> dict[int, float]:
            body = {**body, "stream": False, "logprobs": 20, "cache_prompt": False}  # no KV kept across requests
            response = httpx.post(url + loadgen.COMPLETIONS, json=body, timeout=120)
            assert response.status_code == 200, response.text
            first = response.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            return {entry["id"]: entry["logprob"] for entry in first}

        plain = top({**loadgen.request_body(planned, 0), "lora": [{"id": 0, "scale": 0.0}]})
        selected = top(llama_cpp_baseline.lora_body(["l"])(planned, 0))
        shared = sorted(set(selected) & set(plain))
        assert len(shared) >= 10
        theirs = numpy.array([selected[i] - plain[i] for i in shared])
        ours = numpy.array([(with_peft[i] - without[i]).item() for i in shared])
        assert numpy.abs(ours).max() > 0.1  # the adapter moves these tokens by more than llama.cpp's rounding
        assert numpy.corrcoef(theirs, ours)[0, 1] > 0.9
        assert max(plain, key=plain.get) == int(without.argmax())  # scale 0: the base's first choice
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
