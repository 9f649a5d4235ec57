"""The command line end to end, in a temp dir: train → registry → eval → export/import, and clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import peft
import pytest
from transformers import AutoModelForSequenceClassification

from adapterhub.cli import main


def test_train_push_eval_export_import_round_trip(cli, cli_json, tiny_bert, sentiment_csv, tmp_path):
    trained = cli_json("train", "--base", str(tiny_bert), "--method", "lora", "-o", "r=4", "-o", "target_modules=query,value",
                  "--data", str(sentiment_csv), "--label-column", "sentiment", "--dedupe", "--epochs", "2",
                  "--lr", "5e-3", "--push", "senti", "--tag", "prod", "--json", "--no-progress")  # fmt: skip
    assert trained["pushed"] == "senti@1"
    assert set(trained["metrics"]) >= {"accuracy", "f1_macro", "roc_auc", "train_loss"}
    assert trained["data"]["train_examples"] + trained["data"]["test_examples"] == 200  # retweet copies dropped

    listed = cli_json("registry", "list", "--json")
    assert [(r["name"], r["version"], r["tags"]) for r in listed] == [("senti", 1, ["prod"])]
    assert listed[0]["metrics"]["accuracy"] == trained["metrics"]["accuracy"]

    evaluated = cli_json("eval", "senti:prod", "--base", str(tiny_bert), "--data", str(sentiment_csv), "--json")
    assert evaluated["metrics"]["accuracy"] == trained["metrics"]["accuracy"]  # the same held-out split
    assert evaluated["metrics"]["test_examples"] == trained["data"]["test_examples"]

    cli("registry", "export-peft", "senti@1", str(tmp_path / "exported"))
    plain = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    assert isinstance(peft.PeftModel.from_pretrained(plain, tmp_path / "exported"), peft.PeftModel)

    out = cli("registry", "import-peft", str(tmp_path / "exported"), "senti-copy", "--base", str(tiny_bert))
    assert "imported senti-copy@1 (lora, base bert-" in out
    assert (
        cli_json("registry", "show", "senti-copy", "--json")["blob_sha256"]
        == cli_json("registry", "show", "senti", "--json")["blob_sha256"]
    )
    assert [r["name"] for r in cli_json("registry", "search", "copy", "--json")] == ["senti-copy"]
    assert "ok" in cli("registry", "verify")
    cli("registry", "delete", "senti-copy", "--yes")
    assert [r["name"] for r in cli_json("registry", "list", "--json")] == ["senti"]


def test_causal_lm_qlora_train_and_reload_from_registry(cli_json, tiny_llama, text_file):
    trained = cli_json("train", "--base", str(tiny_llama), "--model-task", "causal-lm", "--quantize", "nf4", "--method", "lora",
                  "--data", str(text_file), "--block-size", "16", "--epochs", "1", "--push", "tiny-qlora",
                  "--json", "--no-progress")  # fmt: skip
    assert set(trained["metrics"]) >= {"loss", "perplexity"}
    evaluated = cli_json(
        "eval", "tiny-qlora", "--base", str(tiny_llama), "--quantize", "nf4", "--data", str(text_file), "--json"
    )
    assert abs(evaluated["metrics"]["loss"] - trained["metrics"]["loss"]) < 1e-5


def test_bad_input_gives_one_line_errors(tiny_bert, sentiment_csv, capsys):
    common = [
        "train",
        "--base",
        str(tiny_bert),
        "--data",
        str(sentiment_csv),
        "--label-column",
        "sentiment",
        "--no-progress",
    ]
    assert main([*common, "--method", "nope"]) == 1
    assert "unknown method 'nope'; installed methods: " in capsys.readouterr().err
    assert main([*common, "--method", "lora", "-o", "rank=3"]) == 1
    assert "unknown option 'rank' for method 'lora'" in capsys.readouterr().err
    assert main([*common, "--method", "lora", "--push", "../escape"]) == 1
    assert "error:" in capsys.readouterr().err
    assert main(["train", "--base", str(tiny_bert), "--data", str(sentiment_csv), "--method", "lora"]) == 1
    assert "has no column 'label'" in capsys.readouterr().err
    assert main(["registry", "show", "missing"]) == 1
    assert "error:" in capsys.readouterr().err


@pytest.mark.integration
def test_console_script_runs_in_a_fresh_process(tmp_path):
    executable = shutil.which("adapterhub")
    assert executable, "the adapterhub console script is not installed"
    result = subprocess.run(
        [executable, "plugins", "--json"], capture_output=True, text=True,
        env={**os.environ, "ADAPTERHUB_HOME": str(tmp_path)}, check=True,
    )  # fmt: skip
    names = {p["name"] for p in json.loads(result.stdout)["plugins"]}
    assert {"lora", "bitsandbytes"} <= names


def test_registry_group_takes_registry_like_every_command_and_root_as_a_hidden_alias(tmp_path, capsys):
    from adapterhub_registry import Registry

    Registry(tmp_path / "reg")  # an empty registry at a place no default points to
    for flag in ("--registry", "--root"):
        assert main(["registry", flag, str(tmp_path / "reg"), "list", "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == []
    assert main(["registry", "--help"]) == 0
    shown = capsys.readouterr().out
    assert "--registry PATH" in shown and "--root" not in shown


def test_train_and_eval_flags_take_defaults_and_limits_from_the_settings_dataclasses():
    import click

    from adapterhub.cli import cli as group
    from adapterhub.settings import DataSpec, TrainSettings

    ctx = click.Context(group)
    train = {p.name: p for p in group.get_command(ctx, "train").params}
    for name in ("epochs", "batch_size", "learning_rate", "max_length", "block_size", "class_weights", "seed"):
        assert train[name].default == TrainSettings.__dataclass_fields__[name].default, name
    assert train["learning_rate"].opts == ["--lr"] and train["epochs"].type.min == 1
    eval_params = {p.name: p for p in group.get_command(ctx, "eval").params}
    for name in ("text_column", "label_column", "encoding", "dedupe", "test_split", "max_samples"):
        assert train[name].default is None and eval_params[name].default is None, (
            name
        )  # "not given": eval reuses the record
        assert DataSpec.__dataclass_fields__[name].metadata["adapterhub.help"].rstrip(".") in train[name].help
    assert "[0.2]" in train["test_split"].help
