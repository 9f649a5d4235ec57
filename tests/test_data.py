"""Reading and splitting data: dedupe of retweets, a split stable across runs, clear errors."""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import re
from pathlib import Path

import pytest

from adapterhub.data import load_classification, normalise, read_text, split_classification
from adapterhub.errors import DataError, OptionError
from adapterhub.train import TrainSettings
from adapterhub.workflow import DataSpec, TrainJob, train_adapter


def test_retweets_are_deduplicated(sentiment_csv):
    with_copies = load_classification(sentiment_csv, label_column="sentiment")
    deduped = load_classification(sentiment_csv, label_column="sentiment", dedupe=True)
    assert len(with_copies.texts) == 210 and len(deduped.texts) == 200
    assert normalise("RT @someone: The Movie  http://x.co/a") == normalise("the movie")


def test_split_is_stable_and_keeps_duplicates_on_one_side(sentiment_csv):
    data = load_classification(sentiment_csv, label_column="sentiment")
    train, test = split_classification(data, 0.25, seed=0)
    again_train, again_test = split_classification(data, 0.25, seed=0)
    assert test.texts == again_test.texts and train.texts == again_train.texts
    assert 30 < len(test.texts) < 75
    assert not {normalise(t) for t in train.texts} & {normalise(t) for t in test.texts}
    _, other_seed = split_classification(data, 0.25, seed=1)
    assert other_seed.texts != test.texts


def test_jsonl_and_fixed_label_order(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"t{i}", "label": lab}) for i, lab in enumerate("bab")))
    data = load_classification(path, label_names=["b", "a"])
    assert data.labels == [0, 1, 0] and data.label_names == ["b", "a"]


def test_missing_column_and_unknown_label_are_clear_errors(sentiment_csv, tmp_path):
    with pytest.raises(DataError, match=r"no column 'label' \(--label-column\); its columns are text, sentiment"):
        load_classification(sentiment_csv)
    with pytest.raises(DataError, match=r"labels \['neg'\] that the adapter does not know"):
        load_classification(sentiment_csv, label_column="sentiment", label_names=["pos"])
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(DataError, match="pass --encoding"):
        load_classification(latin)
    assert load_classification(latin, encoding="latin-1").texts == ["café"]


def test_text_not_in_the_encoding_names_the_byte_and_reads_with_the_right_one(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.txt is not valid utf-8 \(byte 0xe9 at offset 3.*--encoding latin-1"):
        read_text(path)
    assert read_text(path, "latin-1") == "café au lait"


@pytest.mark.parametrize(
    "values, message",
    [({"test_split": 1.0}, "option 'test_split': bad value 1.0; valid values: 0 <= test_split < 1"),
     ({"max_samples": 0}, "option 'max_samples': bad value 0; valid values: max_samples >= 1"),
     ({"encoding": "utf-9"}, "encoding 'utf-9' is not one Python knows")],
)  # fmt: skip
def test_data_spec_refuses_bad_values_when_built(values, message, sentiment_csv):
    with pytest.raises(OptionError, match=re.escape(message)):
        DataSpec(str(sentiment_csv), **values)


@pytest.mark.parametrize("task", ["seq-cls", "causal-lm"])
def test_a_training_run_opens_its_data_file_once(
    task, tiny_bert, tiny_llama, sentiment_csv, text_file, tmp_path, monkeypatch
):
    path = sentiment_csv if task == "seq-cls" else text_file
    opened = []
    real_open = io.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) == path:
            opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting_open)  # Path.open / read_bytes / read_text go through io.open
    monkeypatch.setattr(builtins, "open", counting_open)
    job = TrainJob(str(tiny_bert if task == "seq-cls" else tiny_llama), "lora", DataSpec(str(path), label_column="sentiment"),
                   model_task=task, settings=TrainSettings(epochs=1, batch_size=64), output=str(tmp_path / "adapter"),
                   progress=False)  # fmt: skip
    outcome = train_adapter(job)
    assert len(opened) == 1  # labels, split and the recorded sha256 all come from that one read
    monkeypatch.undo()
    assert outcome.manifest.data_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
