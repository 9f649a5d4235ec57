"""Shared fixtures: tiny random models saved like real local models, a small labelled CSV, and an
isolated ADAPTERHUB_HOME per test so no test touches the user's registry. Nothing here uses the network."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One intra-op thread (before torch is imported; children inherit it): the tiny models gain nothing from more, and
# on a busy machine OpenMP's waiting threads make each op much slower (a 32-wide linear: 88 us with one thread,
# 2.3 ms with two, at load 7 on 2 cores). Set OMP_NUM_THREADS to give the real models of `-m slow` more.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from tiny_models import make_tiny_bert, make_tiny_llama  # noqa: E402

POSITIVE = "great good love awesome happy fun".split()
NEGATIVE = "bad awful hate terrible sad boring".split()
FILLER = "the movie film is was it this very so".split()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> Path:
    """200 short texts whose label is given by one sentiment word; a few retweet duplicates."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "sentiment.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "sentiment"])
        for i in range(200):
            label = rng.choice(["pos", "neg"])
            words = (
                rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)] + rng.sample(FILLER, 2)
            )
            text = " ".join(words) + f" {i}"
            writer.writerow([text, label])
            if i % 20 == 0:
                writer.writerow([f"RT @someone: {text}", label])
    return path


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.sample(FILLER + POSITIVE, 8)) for _ in range(120)))
    return path


@pytest.fixture(scope="session")
def derived_files_cache(tmp_path_factory) -> Path:
    """One cache of derived files (a GGUF base dequantized once) for the whole session: tests stay isolated in
    their registries while SmolLM2 is converted once, not once per test."""
    return tmp_path_factory.mktemp("adapterhub-cache")


@pytest.fixture(autouse=True)
def adapterhub_home(tmp_path, monkeypatch, derived_files_cache) -> Path:
    home = tmp_path / "adapterhub-home"
    monkeypatch.setenv("ADAPTERHUB_HOME", str(home))
    monkeypatch.setenv("ADAPTERHUB_CACHE", str(derived_files_cache))
    monkeypatch.delenv("ADAPTERHUB_REGISTRY", raising=False)
    return home


@pytest.fixture
def cli(capsys):
    """``cli(*args)``: run `adapterhub ...` in-process, assert success and return its stdout."""
    from adapterhub.cli import main

    def run(*args: str) -> str:
        capsys.readouterr()
        status = main(list(args))
        captured = capsys.readouterr()
        assert status == 0, captured.err
        return captured.out

    return run


@pytest.fixture
def cli_json(cli):
    return lambda *args: json.loads(cli(*args))
