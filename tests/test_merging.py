"""Merging registry adapters (adapterhub.merging, `adapterhub merge`): the recorded recipe, byte-identical
replay, identity, the hand-computed rsLoRA delta, heads, IA3 through the same method seam, and the inputs peft
would merge wrong, refused."""

from __future__ import annotations

import json

import pytest
import torch
from bitsandbytes_reference import bitsandbytes_in_float32
from tiny_models import make_tiny_llama
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from adapterhub import adapters, merging, plugins
from adapterhub.base import load_base
from adapterhub.cli import main
from adapterhub.continual.features import encode_tensor
from adapterhub.continual.router import Router
from adapterhub.errors import IncompatibleBaseError, OptionError
from adapterhub_registry import Registry

TOKENS = torch.tensor([[7, 8, 9, 10, 11, 12]])
LABELS = ["neg", "pos"]


def push_lora(registry: Registry, base_path, name: str, tmp_path, *, seed: int, model_task="causal-lm", labels=None,
              quantize=None, data=None, **options):  # fmt: skip
    """Push a LoRA with random non-zero weights (B is zero at init) on a freshly loaded base."""
    options = {"r": 4, "dropout": 0, **options}
    return push_adapter(registry, base_path, name, tmp_path, seed=seed, method="lora", options=options,
                        model_task=model_task, labels=labels, quantize=quantize, data=data)  # fmt: skip


def push_adapter(registry: Registry, base_path, name: str, tmp_path, *, seed: int, method: str, options: dict,
                 model_task="causal-lm", labels=None, quantize=None, data=None):  # fmt: skip
    """Push an adapter of ``method`` whose trainable tensors are random (seeded), on a freshly loaded base."""
    base = load_base(base_path, model_task=model_task, labels=labels, quantize=quantize)
    model = adapters.attach(base, method, adapters.make_options(method, options))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    directory = tmp_path / f"{name}-{seed}"
    manifest = adapters.build_manifest(base, method, adapters.make_options(method, options), data=data)
    adapters.save_adapter(model, directory, manifest)
    return registry.push(name, directory, method=method)


def logits_of(
    registry: Registry, ref: str, base_path, *, model_task="causal-lm", labels=None, quantize=None, tokens=TOKENS,
    nf4_in_float32=False,
):  # fmt: skip
    record, tensors = registry.load(ref)
    base = load_base(base_path, model_task=model_task, labels=labels, quantize=quantize)
    if nf4_in_float32:
        bitsandbytes_in_float32(base.model)  # the same on every CPU (tests/bitsandbytes_reference.py)
    model = adapters.load_adapter(
        base, record.peft_config, tensors, adapter_base=record.base_fingerprint, manifest=record.manifest
    )
    with torch.no_grad():
        return model(input_ids=tokens).logits


def delta_of(registry: Registry, ref: str, module: str) -> torch.Tensor:
    """scaling * B @ A of one LoRA layer, from the stored config and tensors."""
    record, tensors = registry.load(ref)
    config = record.peft_config
    scaling = config["lora_alpha"] / (config["r"] ** 0.5 if config["use_rslora"] else config["r"])
    a, b = (tensors[f"base_model.model.{module}.lora_{x}.weight"] for x in "AB")
    return scaling * b @ a


def test_merge_of_one_adapter_with_weight_one_equals_it_and_records_the_recipe(tiny_llama, tmp_path):
    registry = Registry()
    record = push_lora(registry, tiny_llama, "solo", tmp_path, seed=1)
    result = merging.merge(registry, "solo-merged", [record.ref], str(tiny_llama), weights=[1.0], tags=["merged"])
    torch.testing.assert_close(logits_of(registry, "solo-merged", tiny_llama), logits_of(registry, record.ref, tiny_llama),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    stored = registry.resolve("solo-merged:merged")
    recipe = stored.manifest["merge"]
    assert recipe["inputs"] == [{"ref": "solo@1", "sha256": record.blob_sha256}]
    assert (recipe["weights"], recipe["combination"], recipe["density"], recipe["seed"]) == ([1.0], "linear", None, 0)
    assert recipe["peft"] and stored.blob_sha256 == result.sha256
    assert stored.base_fingerprint == record.base_fingerprint


def test_rslora_inputs_merge_to_the_hand_computed_delta(tiny_llama, tmp_path):
    # peft's merged config would keep use_rslora and scale the merged delta by sqrt(r) a second time
    registry = Registry()
    first = push_lora(registry, tiny_llama, "rs", tmp_path, seed=1, rslora=True, alpha=8)
    second = push_lora(registry, tiny_llama, "rs", tmp_path, seed=2, rslora=True, alpha=8)
    merging.merge(registry, "rs-cat", [first.ref, second.ref], str(tiny_llama), weights=[0.7, 0.3], combination="cat")
    module = "model.layers.0.self_attn.q_proj"
    expected = 0.7 * delta_of(registry, first.ref, module) + 0.3 * delta_of(registry, second.ref, module)
    assert registry.resolve("rs-cat").peft_config["use_rslora"] is False
    torch.testing.assert_close(delta_of(registry, "rs-cat", module), expected, rtol=1e-5, atol=1e-6)


def test_a_merge_of_inputs_trained_on_one_split_records_it_for_eval(tiny_llama, tmp_path, text_file):
    registry = Registry()
    data = {"path": text_file.name, "sha256": "0" * 64, "test_split": 0.2, "seed": 0}
    refs = [push_lora(registry, tiny_llama, "same", tmp_path, seed=s, data=data).ref for s in (1, 2)]
    merging.merge(registry, "same-merged", refs, str(tiny_llama), combination="cat")
    assert registry.resolve("same-merged").manifest["data"] == data


def test_replay_gives_byte_identical_weights_and_a_changed_recipe_exits_1(tiny_llama, tmp_path, capsys):
    registry = Registry()
    refs = [push_lora(registry, tiny_llama, "task", tmp_path, seed=s).ref for s in (1, 2)]
    result = merging.merge(registry, "dare", refs, str(tiny_llama), combination="dare_ties", density=0.5, seed=3)
    assert main(["merge", "--replay", result.record.ref, "--base", str(tiny_llama), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["identical"] is True
    # the same weights recorded with another seed: the replay computes other bytes and says so
    registry.pull(result.record.ref, tmp_path / "pulled")
    recipe = {**result.recipe.to_dict(), "seed": 4}
    registry.push("dare-seed4", tmp_path / "pulled", method="lora", manifest={"merge": recipe})
    assert main(["merge", "--replay", "dare-seed4", "--base", str(tiny_llama)]) == 1
    assert "DIFFERS" in capsys.readouterr().out


def test_classifier_heads_over_the_same_labels_are_merged_as_their_weighted_mean(tiny_bert, tmp_path, cli_json):
    registry = Registry()
    refs = [
        push_lora(registry, tiny_bert, "cls", tmp_path, seed=s, model_task="seq-cls", labels=LABELS).ref for s in (1, 2)
    ]
    out = cli_json("merge", "cls-merged", "--from", refs[0], "--from", refs[1], "--weights", "3,1", "--base", str(tiny_bert),
                   "--combination", "svd", "--json")  # fmt: skip
    assert out["recipe"]["heads"] == "weighted mean" and out["notes"]
    heads = [registry.load(ref)[1]["base_model.model.classifier.weight"] for ref in (*refs, "cls-merged")]
    torch.testing.assert_close(heads[2], 0.75 * heads[0] + 0.25 * heads[1])
    assert registry.resolve("cls-merged").manifest["labels"] == LABELS
    logits = logits_of(registry, "cls-merged", tiny_bert, model_task="seq-cls", labels=LABELS)
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


def test_heads_over_different_labels_are_refused_naming_both(tiny_bert, tmp_path):
    registry = Registry()
    a = push_lora(registry, tiny_bert, "sentiment", tmp_path, seed=1, model_task="seq-cls", labels=LABELS)
    b = push_lora(registry, tiny_bert, "topic", tmp_path, seed=2, model_task="seq-cls", labels=["cars", "films"])
    with pytest.raises(
        OptionError, match=r"topic@1 classifies into \['cars', 'films'\] but sentiment@1 into \['neg', 'pos'\]"
    ):
        merging.merge(registry, "both", [a.ref, b.ref], str(tiny_bert))


@pytest.mark.parametrize(("options", "reason"), [({"dora": True}, "DoRA"), ({"bias": "all"}, "trained biases")])
def test_inputs_peft_merges_wrong_are_refused_with_the_reason(tiny_llama, tmp_path, options, reason):
    registry = Registry()
    plain = push_lora(registry, tiny_llama, "plain", tmp_path, seed=1)
    odd = push_lora(registry, tiny_llama, "odd", tmp_path, seed=2, **options)
    with pytest.raises(OptionError, match=f"odd@1.*{reason}"):
        merging.merge(registry, "never", [plain.ref, odd.ref], str(tiny_llama))
    assert registry.list(name="never") == []


def test_the_lora_merge_spec_refuses_dora_and_accepts_plain_lora(tiny_llama, tmp_path):
    spec = plugins.catalog().method("lora").merge
    registry = Registry()
    dora = push_lora(registry, tiny_llama, "dora", tmp_path, seed=1, dora=True)
    plain = push_lora(registry, tiny_llama, "plain", tmp_path, seed=2)
    assert spec.refuse(dora.peft_config).startswith("is a DoRA adapter: peft's merge drops the inputs' magnitude")
    assert spec.refuse(plain.peft_config) is None


def push_ia3(registry: Registry, base_path, name: str, tmp_path, *, seed: int, **options):
    return push_adapter(registry, base_path, name, tmp_path, seed=seed, method="ia3", options=options)


def test_ia3_adapters_merge_through_their_method_to_the_weighted_sum_of_their_vectors(tiny_llama, tmp_path):
    registry = Registry()
    refs = [push_ia3(registry, tiny_llama, "ia3", tmp_path, seed=s).ref for s in (1, 2)]
    result = merging.merge(registry, "ia3-mix", refs, str(tiny_llama), weights=[0.7, 0.3])
    record, merged = registry.load("ia3-mix")
    (_, first), (_, second) = (registry.load(ref) for ref in refs)
    assert record.method == "ia3" and record.manifest["method"] == "ia3"
    assert sorted(merged) == sorted(first) and any(key.endswith(".ia3_l") for key in merged)
    for key in first:
        torch.testing.assert_close(merged[key], 0.7 * first[key] + 0.3 * second[key])
    replayed, stored = merging.replay(registry, result.record.ref, str(tiny_llama))
    assert replayed.sha256 == stored.blob_sha256


def test_a_combination_the_method_does_not_compute_is_refused_naming_the_method(tiny_llama, tmp_path):
    registry = Registry()
    refs = [push_ia3(registry, tiny_llama, "ia3", tmp_path, seed=s).ref for s in (1, 2)]
    with pytest.raises(OptionError, match="method 'ia3' does not merge with ties; choose one of: linear"):
        merging.merge(registry, "never", refs, str(tiny_llama), combination="ties", density=0.5)
    assert registry.list(name="never") == []


def test_ia3_inputs_scaling_different_modules_are_refused_naming_them(tiny_llama, tmp_path):
    # peft would start the v_proj vectors of the merge from zero, adding only wide's: v_proj nearly silenced
    registry = Registry()
    wide = push_ia3(registry, tiny_llama, "wide", tmp_path, seed=1)  # peft's Llama default: k, v and down_proj
    narrow = push_ia3(registry, tiny_llama, "narrow", tmp_path, seed=2, target_modules=["k_proj", "down_proj"],
                      feedforward_modules=["down_proj"])  # fmt: skip
    with pytest.raises(
        OptionError, match=r"peft cannot merge wide@1, narrow@1 with linear: .*different target_modules"
    ):
        merging.merge(registry, "never", [wide.ref, narrow.ref], str(tiny_llama))


def test_inputs_of_different_methods_are_refused_naming_both(tiny_llama, tmp_path):
    registry = Registry()
    lora = push_lora(registry, tiny_llama, "lora", tmp_path, seed=1)
    ia3 = push_ia3(registry, tiny_llama, "ia3", tmp_path, seed=2)
    with pytest.raises(OptionError, match="ia3@1 is an adapter of method 'ia3', lora@1 of method 'lora'"):
        merging.merge(registry, "never", [lora.ref, ia3.ref], str(tiny_llama))


def test_inputs_on_another_base_are_refused_naming_the_odd_one(tiny_llama, tmp_path):
    registry = Registry()
    ours = push_lora(registry, tiny_llama, "ours", tmp_path, seed=1)
    theirs = push_lora(registry, make_tiny_llama(tmp_path / "other", seed=5), "theirs", tmp_path, seed=2)
    with pytest.raises(IncompatibleBaseError, match=f"theirs@1 was trained on base {theirs.base_fingerprint}"):
        merging.merge(registry, "never", [ours.ref, theirs.ref], str(tiny_llama))


def test_bad_recipes_are_refused_before_loading_anything(tiny_llama, tmp_path, capsys):
    registry = Registry()
    ref = push_lora(registry, tiny_llama, "one", tmp_path, seed=1).ref
    for args, message in [
        (["--combination", "ties"], "pass --density"),
        (["--density", "0.5"], "--density applies to"),
        (["--weights", "1,2"], "2 weight(s) for 1 adapter(s)"),
        (["--weights", "a"], "not a comma-separated list"),
    ]:
        assert main(["merge", "m", "--from", ref, "--base", str(tiny_llama), *args]) != 0
        assert message in capsys.readouterr().err


def test_export_merged_is_a_model_directory_from_pretrained_loads_alone_with_equal_logits(tiny_bert, tmp_path, cli):
    registry = Registry()
    record = push_lora(registry, tiny_bert, "cls", tmp_path, seed=1, model_task="seq-cls", labels=LABELS)
    cli("registry", "export-merged", record.ref, str(tmp_path / "out"), "--base", str(tiny_bert))
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    tokens = AutoTokenizer.from_pretrained(tmp_path / "out")("great movie", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=tokens).logits
    expected = logits_of(registry, record.ref, tiny_bert, model_task="seq-cls", labels=LABELS, tokens=tokens)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    assert model.config.id2label == dict(enumerate(LABELS))


def test_export_merged_writes_the_asked_dtype(tiny_llama, tmp_path, cli):
    registry = Registry()
    record = push_lora(registry, tiny_llama, "lm", tmp_path, seed=1)
    cli(
        "registry", "export-merged", record.ref, str(tmp_path / "out"), "--base", str(tiny_llama), "--dtype", "bfloat16"
    )
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto").eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        logits = model(input_ids=TOKENS).logits.float()
    torch.testing.assert_close(logits, logits_of(registry, record.ref, tiny_llama), rtol=0.05, atol=0.05)


def test_export_merged_of_an_nf4_trained_adapter_merges_into_the_dequantized_weights_and_says_so(
    tiny_llama, tmp_path, cli
):
    registry = Registry()
    record = push_lora(registry, tiny_llama, "qlora", tmp_path, seed=1, quantize="nf4")
    out = cli("registry", "export-merged", record.ref, str(tmp_path / "out"), "--base", str(tiny_llama))
    assert "dequantized nf4 weights" in out
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert getattr(model.config, "quantization_config", None) is None
    with torch.no_grad():
        logits = model(input_ids=TOKENS).logits
    # the NF4 base with the adapter unmerged, its NF4 linears computed in float32 from the dequantized weights
    # (bitsandbytes' own CPU kernel may compute them in bfloat16: compute_nf4_in_float32 says when and how much)
    expected = logits_of(registry, record.ref, tiny_llama, quantize="nf4", nf4_in_float32=True)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def push_task(registry: Registry, base_path, sequence: str, task: str, position: int, labels, tmp_path):
    """A task adapter of a continual sequence as `continual train` records it (continual entry, sequence tag)."""
    record = push_lora(
        registry, base_path, f"{sequence}-{task}", tmp_path, seed=position + 1, model_task="seq-cls", labels=labels
    )
    router = {"prototypes": encode_tensor(torch.randn(1, 32)), "max_length": 16}
    entry = {"sequence": sequence, "task": task, "position": position, "router": router}
    registry.pull(record.ref, tmp_path / f"pulled-{task}")
    return registry.push(record.name, tmp_path / f"pulled-{task}", method="lora", manifest={"continual": entry},
                         tags=[f"sequence-{sequence}"])  # fmt: skip


def test_continual_merge_combines_a_sequences_task_adapters_in_task_order(tiny_bert, tmp_path, cli_json):
    registry = Registry()
    refs = [
        push_task(registry, tiny_bert, "reviews", task, i, LABELS, tmp_path).ref
        for i, task in enumerate(("films", "books"))
    ]
    out = cli_json(
        "continual", "merge", "reviews", "--base", str(tiny_bert), "--combination", "ties", "--density", "0.5", "--json"
    )
    assert out["merged"] == "reviews-merged@1"
    assert [entry["ref"] for entry in out["recipe"]["inputs"]] == refs
    assert (out["recipe"]["combination"], out["recipe"]["density"], out["recipe"]["weights"]) == (
        "ties",
        0.5,
        [0.5, 0.5],
    )


def test_continual_merge_refuses_tasks_with_different_labels_naming_them(tiny_bert, tmp_path, capsys):
    registry = Registry()
    push_task(registry, tiny_bert, "mixed", "films", 0, LABELS, tmp_path)
    push_task(registry, tiny_bert, "mixed", "roads", 1, ["fast", "slow"], tmp_path)
    assert main(["continual", "merge", "mixed", "--base", str(tiny_bert)]) == 1
    assert "task films: neg, pos; task roads: fast, slow" in capsys.readouterr().err


def test_continual_merge_per_task_keeps_each_tasks_own_head_and_forms_a_routable_sequence(
    tiny_bert, tmp_path, cli_json
):
    registry = Registry()
    films = push_task(registry, tiny_bert, "mixed", "films", 0, LABELS, tmp_path)
    roads = push_task(registry, tiny_bert, "mixed", "roads", 1, ["fast", "slow", "jammed"], tmp_path)
    out = cli_json("continual", "merge", "mixed", "--base", str(tiny_bert), "--heads", "per-task", "--combination", "ties",
                   "--density", "0.5", "--json")  # fmt: skip
    assert [o["merged"] for o in out] == ["mixed-merged-films@1", "mixed-merged-roads@1"]
    assert [o["recipe"]["head_from"] for o in out] == [0, 1]
    merged = [registry.load(o["merged"]) for o in out]
    for (record, tensors), task in zip(merged, (films, roads)):
        _, own = registry.load(task.ref)
        heads = [key for key in own if "lora_" not in key]
        assert heads and all(torch.equal(tensors[key], own[key]) for key in heads)  # the task's own head, untouched
        assert record.manifest["labels"] == task.manifest["labels"]
        assert record.manifest["continual"]["sequence"] == "mixed-merged"
    lora = [key for key in merged[0][1] if "lora_" in key]
    assert lora and all(torch.equal(merged[0][1][key], merged[1][1][key]) for key in lora)  # one merged body for all
    router = Router.from_registry("mixed-merged", registry)
    assert [(t.name, t.ref, t.labels) for t in router.tasks] == [
        ("films", "mixed-merged-films@1", tuple(LABELS)),
        ("roads", "mixed-merged-roads@1", ("fast", "slow", "jammed")),
    ]
    replayed, record = merging.replay(registry, "mixed-merged-roads@1", str(tiny_bert))
    assert replayed.sha256 == record.blob_sha256
    logits = logits_of(
        registry, "mixed-merged-roads@1", tiny_bert, model_task="seq-cls", labels=["fast", "slow", "jammed"]
    )
    assert logits.shape[-1] == 3


@pytest.mark.slow
def test_minilm_ties_merge_exports_a_model_with_the_logits_of_base_and_merged_adapter(tmp_path, cli):
    from shipped_assets import minilm_dir

    minilm, labels = minilm_dir(), ["negative", "neutral", "positive"]
    registry = Registry()
    refs = [
        push_lora(registry, minilm, "tweets", tmp_path, seed=s, model_task="seq-cls", labels=labels).ref for s in (1, 2)
    ]
    merged = merging.merge(registry, "tweets-ties", refs, str(minilm), combination="ties", density=0.5).record
    cli("registry", "export-merged", merged.ref, str(tmp_path / "out"), "--base", str(minilm))
    tokens = AutoTokenizer.from_pretrained(tmp_path / "out")(
        "my flight got cancelled again", return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        logits = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()(input_ids=tokens).logits
    expected = logits_of(registry, merged.ref, minilm, model_task="seq-cls", labels=labels, tokens=tokens)
    torch.testing.assert_close(logits, expected, rtol=1e-3, atol=1e-3)  # float32 sums over 6 layers of large deltas
