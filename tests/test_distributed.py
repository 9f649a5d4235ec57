"""Data-parallel training on real launchers: 2 CPU processes with the gloo backend, started by torchrun and
by accelerate launch, must train the same adapter as one process with the same global batch, report the
same (rank-combined) metrics, and push exactly once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import make_tiny_bert

from adapterhub_registry import Registry

# a global batch of 7 rows splits 4/3 between the ranks, and the last one of an epoch is shorter still
COMMON = ["--batch-size", "7", "--epochs", "2", "--no-progress", "--json", "-o", "dropout=0", "--seed", "3"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(launcher: list[str], args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADAPTERHUB_HOME": str(home), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launcher, "-m", "adapterhub.cli", "train", *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]


def _accelerate_launch() -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]  # fmt: skip


@pytest.fixture
def one_process(cli_json):
    """``one_process(*train_args)``: the reference run, in this process (a fresh interpreter would only add its import
    time; the launchers are what the tests exercise). One thread, as each rank gets OMP_NUM_THREADS=1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield lambda *args: cli_json("train", *args)
    torch.set_num_threads(threads)


def _assert_same_adapter(one: Path, two: Path) -> None:
    single, parallel = load_file(one / "adapter_model.safetensors"), load_file(two / "adapter_model.safetensors")
    assert single.keys() == parallel.keys()
    for name in single:
        torch.testing.assert_close(parallel[name], single[name], rtol=1e-5, atol=1e-6, msg=name)
    assert any(bool(t.abs().sum() > 0) for name, t in single.items() if "lora_B" in name)  # it did train


@pytest.fixture(scope="module")
def deterministic_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("bert-no-dropout"), dropout=0.0)


@pytest.mark.integration
def test_torchrun_two_gloo_processes_train_the_adapter_one_process_trains(
    deterministic_bert, sentiment_csv, tmp_path, one_process
):
    args = [
        "--base",
        str(deterministic_bert),
        "--method",
        "lora",
        "--data",
        str(sentiment_csv),
        "--label-column",
        "sentiment",
        *COMMON,
    ]
    single = one_process(*args, "--output", str(tmp_path / "one"))
    done = _run(_torchrun(), [*args, "--output", str(tmp_path / "two"), "--push", "ddp-sentiment"], tmp_path / "home2")

    parallel = json.loads(done.stdout)  # one JSON document: only rank 0 reports
    assert (single["world_size"], parallel["world_size"]) == (1, 2)
    assert parallel["steps"] == single["steps"]
    _assert_same_adapter(tmp_path / "one", tmp_path / "two")
    for metric in ("accuracy", "f1_macro", "roc_auc", "train_loss"):  # held-out set split over ranks, then gathered
        assert parallel["metrics"][metric] == pytest.approx(single["metrics"][metric], abs=1e-5)
    records = Registry(tmp_path / "home2" / "registry").list()
    assert [r.ref for r in records] == ["ddp-sentiment@1"]  # rank 1 did not push
    assert records[0].manifest["training"]["world_size"] == 2


@pytest.mark.integration
def test_accelerate_launch_trains_a_causal_lm_like_one_process(tmp_path, text_file, tiny_llama, one_process):
    args = [
        "--base",
        str(tiny_llama),
        "--model-task",
        "causal-lm",
        "--method",
        "lora",
        "--data",
        str(text_file),
        "--block-size",
        "16",
        *COMMON,
    ]
    single = one_process(*args, "--output", str(tmp_path / "one"))
    parallel = json.loads(
        _run(_accelerate_launch(), [*args, "--output", str(tmp_path / "two")], tmp_path / "home").stdout
    )

    assert parallel["world_size"] == 2
    _assert_same_adapter(tmp_path / "one", tmp_path / "two")  # loss weighted by each rank's predicted tokens
    assert parallel["metrics"]["loss"] == pytest.approx(single["metrics"]["loss"], rel=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for machines without a GPU")
def test_fsdp_config_without_a_gpu_is_a_clear_error(monkeypatch):
    from adapterhub.distributed import Distributed
    from adapterhub.errors import OptionError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(OptionError, match="FSDP .* needs GPUs .* torchrun, or accelerate launch --multi_gpu"):
        Distributed.from_environment()


@pytest.mark.slow
@pytest.mark.integration
def test_torchrun_on_minilm_and_real_tweets_matches_one_process(tmp_path, one_process):
    """The real 22.7M-parameter BERT (dropout switched off so the runs can be compared) on 240 tweets."""
    from shipped_assets import minilm_dir, tweets_csv

    from benchmarks.models import without_dropout

    model = without_dropout(minilm_dir(), tmp_path / "minilm-no-dropout")
    args = ["--base", str(model), "--method", "lora", "-o", "r=8", "-o", "dropout=0", "--data", str(tweets_csv()),
            "--label-column", "sentiment", "--encoding", "latin-1", "--dedupe", "--max-samples", "300", "--epochs", "1",
            "--batch-size", "16", "--max-length", "32", "--lr", "1e-3", "--no-progress", "--json"]  # fmt: skip
    single = one_process(*args, "--output", str(tmp_path / "one"))
    parallel = json.loads(_run(_torchrun(), [*args, "--output", str(tmp_path / "two")], tmp_path / "home").stdout)
    assert parallel["world_size"] == 2 and parallel["steps"] == single["steps"]
    one, two = (
        load_file(tmp_path / "one" / "adapter_model.safetensors"),
        load_file(tmp_path / "two" / "adapter_model.safetensors"),
    )
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    assert parallel["metrics"]["accuracy"] == pytest.approx(single["metrics"]["accuracy"], abs=1e-9)


@pytest.mark.integration
def test_continual_train_under_torchrun_pushes_each_task_once_with_its_router_entry(deterministic_bert, tmp_path):
    from continual_tasks import write_plan

    plan = write_plan(tmp_path / "plan", deterministic_bert, tasks=("films", "roads"),
                      settings={"epochs": 2, "batch_size": 16, "learning_rate": 0.05, "max_length": 16})  # fmt: skip
    env = {**os.environ, "ADAPTERHUB_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*_torchrun(), "-m", "adapterhub.cli", "continual", "train", str(plan), "--json", "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    output = json.loads(done.stdout)  # rank 0 alone reports
    assert [(t["task"], t["adapter"]) for t in output["tasks"]] == [("films", "toy-films@1"), ("roads", "toy-roads@1")]
    assert done.stderr.count("films: training lora") == 1
    registry = Registry(tmp_path / "home" / "registry")
    assert [r.ref for r in registry.list(all_versions=True)] == ["toy-films@1", "toy-roads@1"]
    for record in registry.list():
        assert record.manifest["training"]["world_size"] == 2 and record.manifest["continual"]["router"]["prototypes"]


@pytest.mark.integration
def test_a_nan_loss_on_one_rank_stops_every_rank_at_the_same_step(tmp_path, sentiment_csv):
    from tiny_models import poison_embeddings

    base = poison_embeddings(make_tiny_bert(tmp_path / "bert", dropout=0.0), ["boring"])
    env = {**os.environ, "ADAPTERHUB_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    args = ["--base", str(base), "--method", "lora", "--data", str(sentiment_csv), "--label-column", "sentiment",
            "--batch-size", "4", "--epochs", "1", "--no-progress", "--push", "never"]  # fmt: skip
    done = subprocess.run(
        [*_torchrun(), "-m", "adapterhub.cli", "train", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode != 0
    stops = [line for line in done.stderr.splitlines() if line.startswith("error: alert nan at step")]
    assert len(stops) == 2 and stops[0] == stops[1]  # both ranks, same step: neither waits for the other forever
    assert Registry(tmp_path / "home" / "registry").list() == []
