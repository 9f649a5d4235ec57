"""Mistakes in `train` and `eval` are reported before the base model loads, with the near miss where there is one.

As in test_cli_bad_values, a check that must come first runs against a base path that does not exist: the error
names the mistake, not the base, so it was raised before the base would have been loaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import make_tiny_bert

from adapterhub.cli import main
from adapterhub.manifest import BaseIdentity

MISSING_BASE = "no-such-base-dir"


def _error(capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(list(args)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert "not found" not in err or "base model" not in err, err  # the base was never reached
    return err


def _train(base: str | Path, data: Path, *args: str) -> list[str]:
    return ["train", "--base", str(base), "--method", "lora", "--data", str(data), "--no-progress", *args]


def test_unknown_method_option_suggests_the_near_miss_before_the_base_loads(sentiment_csv, capsys):
    err = _error(capsys, *_train(MISSING_BASE, sentiment_csv, "--label-column", "sentiment", "-o", "rr=8"))
    assert "unknown option 'rr' for method 'lora'; did you mean 'r'?" in err


def test_missing_label_column_names_the_columns_and_the_near_miss_before_the_base_loads(sentiment_csv, capsys):
    err = _error(capsys, *_train(MISSING_BASE, sentiment_csv, "--label-column", "sentimnet"))
    assert "has no column 'sentimnet' (--label-column); its columns are text, sentiment" in err
    assert "Did you mean --label-column sentiment?" in err


@pytest.mark.parametrize("header", ["", "I just don't trust my life in google's hands\n"])
def test_plain_text_read_for_classification_suggests_causal_lm(header, text_file, tmp_path, capsys):
    """A .txt file, or a CSV whose first line is a sentence: not a table of labelled texts."""
    data = text_file if not header else tmp_path / "tweets.csv"
    if header:
        data.write_text(header + "what a day\n")
    err = _error(capsys, *_train(MISSING_BASE, data))
    assert "looks like plain text" in err and "--model-task causal-lm" in err


def test_empty_base_is_named_as_empty(sentiment_csv, capsys):
    err = _error(capsys, *_train("", sentiment_csv, "--label-column", "sentiment"))
    assert "--base is empty ('')" in err


@pytest.fixture
def pushed(cli_json, tiny_bert, sentiment_csv) -> str:
    cli_json(*_train(tiny_bert, sentiment_csv, "--label-column", "sentiment", "--epochs", "1", "--push", "senti",
                     "--json"))  # fmt: skip
    return "senti@1"


def test_eval_checks_its_data_before_the_base_loads(pushed, sentiment_csv, tmp_path, capsys):
    err = _error(capsys, "eval", pushed, "--base", MISSING_BASE, "--data", str(tmp_path / "nope.csv"))
    assert "data file" in err and "nope.csv" in err and "not found" in err
    err = _error(
        capsys, "eval", pushed, "--base", MISSING_BASE, "--data", str(sentiment_csv), "--label-column", "label"
    )
    assert "has no column 'label' (--label-column)" in err


def test_wrong_base_at_eval_names_the_base_to_load_both_ways(cli_json, tiny_bert, sentiment_csv, tmp_path, capsys):
    other = make_tiny_bert(tmp_path / "other-bert", seed=1)
    for base in (tiny_bert, other):
        cli_json(*_train(base, sentiment_csv, "--label-column", "sentiment", "--epochs", "1", "--push", base.name,
                         "--json"))  # fmt: skip
    for trained_on, loaded in ((tiny_bert, other), (other, tiny_bert)):
        capsys.readouterr()
        assert main(["eval", trained_on.name, "--base", str(loaded), "--data", str(sentiment_csv)]) == 1
        err = capsys.readouterr().err
        assert f"was trained on base {trained_on.resolve()} (BertModel, fingerprint bert-" in err
        assert f"the loaded base is {loaded.resolve()} (BertModel" in err
        assert f"(--base {trained_on.resolve()})" in err and "--force" in err and "force=True" not in err


def test_a_manifest_from_before_the_base_was_recorded_as_given_still_names_it():
    old = BaseIdentity.from_dict({"fingerprint": "bert-1", "model_type": "bert", "source": "model"})
    assert old.described() == "model (fingerprint bert-1)"


@pytest.mark.integration
@pytest.mark.parametrize("mistake", [["-o", "rr=8"], ["--label-column", "sentimnet"]])
def test_train_reports_a_mistake_before_it_imports_torch(mistake, sentiment_csv):
    """The seconds of importing torch, transformers and peft are not spent on a command that cannot run."""
    args = _train(MISSING_BASE, sentiment_csv, *mistake)
    code = f"import sys; from adapterhub.cli.main import main; status = main({args!r}); print(status, 'torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["1", "False"], run.stderr
    assert "did you mean" in run.stderr.lower()
