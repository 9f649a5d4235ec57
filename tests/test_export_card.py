"""`registry export-peft` writes what loading needs beside the PEFT files: a model card with the loading snippet,
and a classifier's labels, so transformers and peft alone give the answers adapterhub gives."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from adapterhub.cli import main

TEXTS = ["the movie was great fun", "this film is awful and boring", "it was so sad", "i love it", "the car is fast"]


def _train(cli_json, base, *args: str) -> dict:
    return cli_json("train", "--base", str(base), "--method", "lora", "-o", "r=4", *args, "--epochs", "2",
                    "--lr", "5e-3", "--json", "--no-progress")  # fmt: skip


def _front_matter(card: str) -> dict[str, object]:
    """The card's YAML front matter, as the few shapes it uses (``key: "value"`` and lists of ``- "item"``)."""
    block = card.split("---\n")[1]
    values: dict[str, object] = {}
    key = ""
    for line in block.splitlines():
        if line.startswith("- "):
            values.setdefault(key, []).append(json.loads(line[2:]))  # type: ignore[union-attr]
        else:
            key, _, value = line.partition(":")
            if value.strip():
                values[key] = json.loads(value.strip())
    return values


@pytest.mark.integration
def test_exported_classifier_loads_with_transformers_and_peft_alone_and_answers_as_adapterhub(
    cli, cli_json, tiny_bert, sentiment_csv, tmp_path
):
    _train(cli_json, tiny_bert, "--data", str(sentiment_csv), "--label-column", "sentiment", "--push", "senti")
    cli("registry", "export-peft", "senti", str(tmp_path / "out"))

    card = (tmp_path / "out" / "README.md").read_text()
    front = _front_matter(card)
    assert front["base_model"] == str(tiny_bert.resolve())
    assert front["library_name"] == "peft" and front["pipeline_tag"] == "text-classification"
    assert {"peft", "lora", "adapterhub"} <= set(front["tags"])  # type: ignore[arg-type]
    assert "| 0 | neg |" in card and "| 1 | pos |" in card
    from adapterhub_registry import Registry

    record = Registry().resolve("senti")
    assert f"`{record.base_fingerprint}`" in card and "| accuracy |" in card
    assert json.loads((tmp_path / "out" / "label_config.json").read_text()) == {
        "num_labels": 2, "id2label": {"0": "neg", "1": "pos"}, "label2id": {"neg": 0, "pos": 1},
    }  # fmt: skip

    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    follow = snippet + (
        "\nimport sys\n"
        "inputs = tokenizer(json.loads(sys.argv[1]), return_tensors='pt', padding=True, truncation=True)\n"
        "scores = model(**inputs).logits.softmax(-1)\n"
        "print(json.dumps({'labels': [model.config.id2label[i] for i in scores.argmax(-1).tolist()],\n"
        "                  'scores': scores.tolist(), 'ours': sorted(m for m in sys.modules if m.split('.')[0].startswith('adapterhub'))}))\n"
    )
    fresh = subprocess.run([sys.executable, "-c", follow, json.dumps(TEXTS)], capture_output=True, text=True,
                           cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr
    loaded = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert loaded["ours"] == []  # transformers and peft alone

    from adapterhub.base import load_base
    from adapterhub.runtime.inference import classify
    from adapterhub.runtime.pool import AdapterPool

    pool = AdapterPool(load_base(tiny_bert, model_task="seq-cls", labels=record.manifest["labels"]))
    answers = classify(pool, TEXTS, [record.ref] * len(TEXTS))
    assert loaded["labels"] == [a.label for a in answers]
    for scores, answer in zip(loaded["scores"], answers):
        assert scores == pytest.approx([answer.scores["neg"], answer.scores["pos"]], abs=1e-5)


def test_exported_causal_lm_gets_a_card_for_text_generation_and_no_label_config(cli, cli_json, tiny_llama, text_file,
                                                                                 tmp_path):  # fmt: skip
    _train(cli_json, tiny_llama, "--model-task", "causal-lm", "--data", str(text_file), "--block-size", "16",
           "--push", "story")  # fmt: skip
    cli("registry", "export-peft", "story@1", str(tmp_path / "out"))
    card = (tmp_path / "out" / "README.md").read_text()
    front = _front_matter(card)
    assert front["pipeline_tag"] == "text-generation" and front["base_model"] == str(tiny_llama.resolve())
    assert "AutoModelForCausalLM.from_pretrained(" in card and "PeftModel.from_pretrained(" in card
    assert not (tmp_path / "out" / "label_config.json").exists()


def test_card_of_a_packaged_base_names_its_hub_id():
    from pathlib import Path

    from adapterhub.model_card import export_files

    manifest = {"method": "lora", "task": "seq-cls", "labels": ["negative", "positive"],
                "base": {"fingerprint": "bert-abc", "source": "model", "given": "minilm", "architecture": "BertModel"}}  # fmt: skip
    from adapterhub.packaged import PACKAGED

    hub_id = PACKAGED["minilm"].hub_id  # the card names it as metadata; nothing here loads from a hub
    assert hub_id and "/" in hub_id
    card = export_files("s@1", manifest, {"accuracy": 0.8}, Path("out"))["README.md"].decode()
    assert f'base_model: "{hub_id}"' in card
    assert f'from_pretrained("{hub_id}", **label_config)' in card


def test_export_into_an_earlier_export_names_the_overwrite_flag(cli, cli_json, tiny_bert, sentiment_csv, tmp_path,
                                                               capsys):  # fmt: skip
    _train(cli_json, tiny_bert, "--data", str(sentiment_csv), "--label-column", "sentiment", "--push", "senti")
    cli("registry", "export-peft", "senti", str(tmp_path / "out"))
    capsys.readouterr()
    assert main(["registry", "export-peft", "senti", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "pass --overwrite to replace them" in err and "overwrite=True" not in err
    assert main(["registry", "export-peft", "senti", str(tmp_path / "out"), "--overwrite"]) == 0
