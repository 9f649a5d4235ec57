"""`adapterhub quickstart`: the run it stands for is the README's `adapterhub train` command line, and end to end on
the packaged MiniLM and tweets (slow: a real model, about a minute of training on an idle 2-core CPU) it pushes a
version tagged quickstart, evaluates it from the registry, and the adapter beats the majority class of its own
held-out split."""

from __future__ import annotations

import json
import shlex

import pytest

from adapterhub_registry import Registry


def test_the_run_it_stands_for_parses_as_adapterhub_train_with_the_readme_settings():
    from adapterhub.cli.main import train_command
    from adapterhub.cli.quickstart import equivalent_train_command

    words = shlex.split(equivalent_train_command("sentiment-lora", 4000, 1, 0, None))
    assert words[:2] == ["adapterhub", "train"]
    params = train_command.make_context("train", words[2:]).params
    assert (params["base"], params["method"], params["method_options"], params["path"]) == (
        "minilm",
        "lora",
        ("r=8",),
        "tweets",
    )
    assert (params["max_samples"], params["epochs"], params["batch_size"], params["max_length"]) == (4000, 1, 32, 48)
    assert (params["learning_rate"], params["seed"], params["push"], params["tags"]) == (
        1e-3,
        0,
        "sentiment-lora",
        ("quickstart",),
    )


@pytest.mark.slow
def test_quickstart_pushes_an_adapter_that_beats_the_majority_class(tmp_path, monkeypatch, capsys):
    from adapterhub.cli import main

    monkeypatch.chdir(tmp_path)  # nothing here shadows the packaged names
    registry = tmp_path / "registry"
    # 400 tweets for three epochs (33 steps): one epoch of 11 steps ends still at the majority class
    status = main(["quickstart", "--max-samples", "400", "--epochs", "3", "--json", "--no-progress",
                   "--registry", str(registry)])  # fmt: skip
    captured = capsys.readouterr()
    assert status == 0, captured.err
    report = json.loads(captured.out)

    record = Registry(registry).resolve("sentiment-lora:quickstart")
    assert record.ref == report["adapter"] == "sentiment-lora@1"
    assert record.manifest["data"]["label_column"] == "sentiment" and record.manifest["data"]["dedupe"] is True
    metrics = report["metrics"]
    assert set(metrics) == {"accuracy", "f1_macro", "roc_auc", "majority_baseline"}
    assert all(0.0 <= value <= 1.0 for value in metrics.values()), metrics
    assert report["test_examples"] + report["train_examples"] == 400 and report["test_examples"] > 40
    assert metrics["accuracy"] > metrics["majority_baseline"], metrics
    assert metrics["roc_auc"] > 0.5, metrics
    assert f"adapterhub eval {record.ref} --base minilm --data tweets --registry {registry}" in report["next"]

    # the printed eval command, run as printed, reproduces the figures
    command = next(c for c in report["next"] if c.startswith("adapterhub eval "))
    assert main(shlex.split(command)[1:] + ["--json"]) == 0
    again = json.loads(capsys.readouterr().out)["metrics"]
    assert again["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-9)
    assert again["majority_baseline"] == pytest.approx(metrics["majority_baseline"], abs=1e-9)
