"""Training monitor: alerts that warn or stop (a NaN loss forced through a real model file), step logs in
JSONL and TensorBoard, and early stopping that keeps the best weights."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import make_tiny_bert, poison_embeddings

from adapterhub import adapters
from adapterhub.alerts import AlertChecker, AlertRule, merge_rules, parse_alert
from adapterhub.base import load_base
from adapterhub.cli import main
from adapterhub.errors import OptionError
from adapterhub.evaluation import evaluate_batches
from adapterhub.monitor import EarlyStopping, MonitorSettings
from adapterhub.prepare import labels_of, prepare
from adapterhub.train import TrainSettings, train
from adapterhub.workflow import DataSpec
from adapterhub_registry import Registry


def _poisoned_bert(directory: Path, words: list[str] | None) -> Path:
    """A tiny BERT whose embedding rows for ``words`` (all rows when None) are NaN, saved as a real model."""
    return poison_embeddings(make_tiny_bert(directory), words)


def _train_args(base: Path, data: Path, *extra: str) -> list[str]:
    return ["train", "--base", str(base), "--method", "lora", "--data", str(data), "--label-column", "sentiment",
            "--epochs", "1", "--batch-size", "16", "--no-progress", "--json", *extra]  # fmt: skip


def test_nan_loss_stops_training_with_a_clear_message_and_pushes_nothing(
    tmp_path, sentiment_csv, capsys, adapterhub_home
):
    base = _poisoned_bert(tmp_path / "nan-bert", None)
    status = main(_train_args(base, sentiment_csv, "--push", "never"))
    err = capsys.readouterr().err
    assert status == 1
    assert "alert nan at step 1: the loss is nan" in err and "lower the learning rate" in err
    assert "nothing was saved or pushed" in err
    assert Registry(adapterhub_home / "registry").list() == []


def test_nan_alert_set_to_warn_skips_the_bad_steps_and_keeps_training(tmp_path, sentiment_csv, cli_json, capsys):
    base = _poisoned_bert(tmp_path / "half-nan-bert", ["boring"])  # NaN only in batches holding this word
    outcome = cli_json(
        *_train_args(base, sentiment_csv, "--alert", "nan=warn", "--batch-size", "4", "--output", str(tmp_path / "out"))
    )
    assert len(outcome["alerts"]) == 1 and outcome["alerts"][0].startswith("alert nan at step")  # reported once
    assert outcome["skipped_steps"] > 1
    assert 0 < outcome["steps"] < 43  # 43 batches: the skipped ones made no optimizer step
    assert outcome["metrics"]["non_finite_outputs"] > 0  # held-out texts with the word: counted wrong, not a crash
    weights = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_memory_limit_alert_can_stop_the_run(tiny_bert, sentiment_csv, capsys):
    status = main(_train_args(tiny_bert, sentiment_csv, "--alert", "memory_mb=1:stop"))
    err = capsys.readouterr().err
    assert status == 1
    assert "alert memory_mb at step 1" in err and "over the limit of 1 MiB" in err and "lower --batch-size" in err


@pytest.fixture(scope="module")
def logged_run(tiny_bert, sentiment_csv, tmp_path_factory) -> tuple[dict, Path, Path]:
    """One run shared by the warning-alert and step-log tests: a grad_norm alert that fires at every step (warn),
    with the JSONL step log, TensorBoard and an eval every 5 steps. Returns (--json output, log file, board dir)."""
    directory = tmp_path_factory.mktemp("logged-run")
    log, board = directory / "log.jsonl", directory / "tb"
    args = _train_args(tiny_bert, sentiment_csv, "--alert", "grad_norm=1e-12", "--log-file", str(log), "--tensorboard", str(board),
                       "--eval-every", "5")  # fmt: skip
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as out:
        patch.setenv(
            "ADAPTERHUB_HOME", str(directory / "home")
        )  # monkeypatch and capsys are per test; this is per module
        assert main(args) == 0
    return json.loads(out.getvalue()), log, board


def test_a_warning_alert_is_reported_once_while_it_keeps_firing(logged_run):
    outcome, _, _ = logged_run
    assert len(outcome["alerts"]) == 1 and outcome["alerts"][0].startswith("alert grad_norm at step 1: gradient norm")
    assert outcome["stopped_early"] is False and outcome["adapter_bytes"] > 0


def test_loss_spike_and_throughput_drop_rules():
    checker = AlertChecker([parse_alert("loss_spike=3"), parse_alert("throughput_drop=0.5:stop")])
    for step in range(1, 11):
        assert checker.check(step, loss=1.0, grad_norm=1.0, samples_per_s=100.0, memory_mb=10.0) == []
    spike = checker.check(11, loss=3.5, grad_norm=1.0, samples_per_s=100.0, memory_mb=10.0)
    assert [a.rule.name for a in spike] == ["loss_spike"] and "3.5x the mean" in spike[0].message
    for step in range(12, 16):
        found = checker.check(step, loss=1.0, grad_norm=1.0, samples_per_s=10.0, memory_mb=10.0)
    assert [(a.rule.name, a.rule.action) for a in found] == [("throughput_drop", "stop")]
    assert "another job competing" in found[0].message


def test_warn_alert_fires_again_after_the_condition_clears():
    checker = AlertChecker([AlertRule("memory_mb", 100.0, "warn")])
    readings = [150, 150, 50, 150]
    fired = [bool(checker.check(i, 1.0, 1.0, 10.0, memory)) for i, memory in enumerate(readings, 1)]
    assert fired == [True, False, False, True]


def test_alert_parsing_and_defaults():
    assert parse_alert("nan=warn") == AlertRule("nan", None, "warn")
    assert parse_alert("memory_mb=4000:stop") == AlertRule("memory_mb", 4000.0, "stop")
    assert [r.name for r in merge_rules([parse_alert("loss_spike=2:stop")])] == ["nan", "loss_spike"]
    assert merge_rules([parse_alert("loss_spike=2:stop")])[1].action == "stop"
    for bad, why in [("speed=1", "unknown alert 'speed'"), ("loss_spike=x", "needs a number"),
                     ("loss_spike=2:panic", "'warn' or 'stop'"), ("throughput_drop=1.5", "between 0 and 1")]:  # fmt: skip
        with pytest.raises(OptionError, match=why):
            parse_alert(bad)


@pytest.mark.parametrize("make, option", [
    (lambda: MonitorSettings(log_every=0), "'log_every'"), (lambda: MonitorSettings(eval_every=0), "'eval_every'"),
    (lambda: EarlyStopping("loss", patience=0), "'patience'"), (lambda: EarlyStopping("loss", min_delta=-0.1), "'min_delta'"),
    (lambda: EarlyStopping("loss", min_delta=float("nan")), "'min_delta'"),
])  # fmt: skip
def test_monitor_settings_out_of_range_are_refused_when_built_naming_the_setting(make, option):
    with pytest.raises(OptionError, match=option):
        make()


def test_monitor_flags_default_to_the_settings_dataclasses_and_set_their_fields(sentiment_csv):
    from adapterhub.cli.main import _monitor_settings, train_command

    def monitor_of(*flags: str) -> MonitorSettings:
        args = ["--base", "some-base", "--data", str(sentiment_csv), "--method", "lora", *flags]
        params = train_command.make_context("train", args).params
        return _monitor_settings(**{name: params[name] for name in inspect.signature(_monitor_settings).parameters})

    assert monitor_of() == MonitorSettings()
    given = monitor_of("--early-stopping", "loss", "--patience", "5", "--alert", "grad_norm=9", "--log-every", "3")
    assert given == MonitorSettings(log_every=3, alerts=[AlertRule("grad_norm", 9.0, "warn")],
                                    early_stopping=EarlyStopping("loss", patience=5))  # fmt: skip


def test_step_log_goes_to_jsonl_and_tensorboard(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    outcome, log, board = logged_run
    events = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == outcome["steps"]
    assert set(steps[0]) >= {"loss", "learning_rate", "grad_norm", "samples_per_s", "tokens_per_s", "memory_mb"}
    assert all(e["samples_per_s"] > 0 and e["tokens_per_s"] > 0 and e["memory_mb"] > 0 for e in steps)
    assert [e["step"] for e in events if e["event"] == "eval"] == [5, 10, outcome["steps"]]
    assert outcome["samples_per_s"] > 0 and outcome["peak_memory_mb"] > 0

    accumulator = EventAccumulator(str(board))
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    assert {
        "train/loss",
        "train/learning_rate",
        "train/grad_norm",
        "train/tokens_per_s",
        "train/memory_mb",
        "eval/accuracy",
    } <= set(scalars)
    assert [e.step for e in accumulator.Scalars("train/loss")] == list(range(1, outcome["steps"] + 1))


def test_early_stopping_ends_the_run_when_the_metric_stops_improving(
    tiny_bert, sentiment_csv, cli_json, adapterhub_home
):
    outcome = cli_json(*_train_args(tiny_bert, sentiment_csv, "--lr", "0", "--eval-every", "2", "--early-stopping", "accuracy",
                                    "--patience", "2", "--push", "patient"))  # fmt: skip
    assert outcome["stopped_early"] is True
    assert (outcome["steps"], outcome["best_step"]) == (6, 2)  # evals at 2 (best), 4 and 6 (no gain twice)
    training = Registry(adapterhub_home / "registry").resolve("patient").manifest["training"]
    assert training["stopped_early"] is True and training["monitor"]["early_stopping"]["metric"] == "accuracy"


def test_early_stopping_keeps_the_best_weights_not_the_last(tiny_bert, sentiment_csv):
    data = DataSpec(str(sentiment_csv), label_column="sentiment")
    labels = labels_of(data)
    base = load_base(tiny_bert, model_task="seq-cls", labels=labels)
    settings = TrainSettings(epochs=3, batch_size=8, learning_rate=5e-2, seed=0)
    prepared = prepare(base, data, settings, labels)
    make_train, n_train, make_eval = prepared.make_train, prepared.n_train, prepared.make_eval
    model = adapters.attach(base, "lora", adapters.make_options("lora", {"dropout": 0.0}))
    monitor = MonitorSettings(eval_every=3, early_stopping=EarlyStopping("roc_auc", patience=100))
    result = train(model, make_train, n_train, make_eval, "seq-cls", settings, progress=False, monitor=monitor)

    scores = [record["roc_auc"] for record in result.history]
    assert result.metrics["roc_auc"] == max(scores) and scores[-1] < max(scores)  # the last was not the best
    assert evaluate_batches(model, make_eval(), "seq-cls")["roc_auc"] == pytest.approx(max(scores), abs=1e-12)
    assert result.best_step == result.history[scores.index(max(scores))]["step"]


def test_early_stopping_on_a_metric_evaluation_does_not_give_fails_before_training(tiny_bert, sentiment_csv, capsys):
    status = main(_train_args(tiny_bert, sentiment_csv, "--early-stopping", "bleu"))
    err = capsys.readouterr().err
    assert status == 1
    assert "early stopping watches 'bleu', but evaluation gives accuracy, f1_macro, roc_auc" in err
    assert "step 1" not in err
