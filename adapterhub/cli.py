"""The ``adapterhub`` command line: plugins, train, eval and registry; plugins add their own commands.

Errors we raise on purpose (bad input, missing plugin, wrong base, corrupt file) are printed as one line
saying what to do, with exit status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys

import click

from adapterhub import __version__, plugins
from adapterhub.cli_output import echo_json
from adapterhub.continual.command import continual_group
from adapterhub.options import click_type
from adapterhub.registry_cli import registry_group
from adapterhub.server.command import serve_command
from adapterhub.train import TrainSettings
from adapterhub.workflow import DataSpec
from benchmarks.cli import bench_command


class _Group(click.Group):
    """Lists plugin commands in ``--help``, loading plugins only when a command is looked up."""

    def _with_plugins(self) -> None:
        # Each plugin is called on its own: one that raises is reported (here and by `adapterhub plugins`)
        # and must not take `--help` or the other commands down with it.
        if getattr(self, "_plugins_added", False):
            return
        self._plugins_added = True
        for problem in plugins.add_plugin_commands(self):
            click.echo(f"warning: {problem}; its commands may be unavailable", err=True)

    def list_commands(self, ctx):
        self._with_plugins()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        self._with_plugins()
        return super().get_command(ctx, name)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="adapterhub")
def cli() -> None:
    """Train, store and evaluate parameter-efficient adapters on one frozen base model."""


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_command(as_json: bool) -> None:
    """List installed plugins, their versions and what each contributes (and any that failed to load)."""
    catalog = plugins.catalog()
    rows = [
        {"name": p.name, "distribution": p.distribution, "version": p.version, "error": p.error,
         **({} if p.error else catalog.contributions_of(p.name))}
        for p in catalog.plugins
    ]  # fmt: skip
    capabilities = {name: sorted(c.spec.capabilities) for name, c in catalog.methods.items()}
    for row in rows:
        if not row["error"]:
            row["capabilities"] = {method: capabilities[method] for method in row["methods"]}
    problems = catalog.hook_errors + [
        f"{kind} {name!r} is claimed by {' and '.join(owners)}" for (kind, name), owners in catalog.conflicts.items()
    ]
    from adapterhub.kernels import kernel_report

    ops = kernel_report()
    if as_json:
        echo_json({"plugins": rows, "problems": problems, "ops": ops})
        return
    for row in rows:
        click.echo(f"{row['name']} ({row['distribution']} {row['version']})")
        if row["error"]:
            click.echo(f"  FAILED TO LOAD: {row['error']}")
            continue
        for kind in ("methods", "quantizers", "kernels"):
            if row[kind]:
                click.echo(f"  {kind}: {', '.join(row[kind])}")
        for method, method_capabilities in row["capabilities"].items():
            click.echo(f"  {method} capabilities: {', '.join(method_capabilities) or '-'}")
    for op in ops:
        passed = "; ".join(f"{name}: {why}" for name, why in op["passed_over"].items())
        click.echo(f"op {op['op']} on {op['device']}/{op['dtype']}: {op['active']}" + (f" (not: {passed})" if passed else ""))
    for problem in problems:
        click.echo(f"problem: {problem}")
    if not rows:
        click.echo("no plugins installed (pip install adapterhub-lora, ...)")


def _known_encoding(ctx, param, value: str | None) -> str | None:
    """Checks --encoding while parsing, so `eval` refuses it before resolving the adapter."""
    from adapterhub.data import check_encoding
    from adapterhub.errors import OptionError

    try:
        if value is not None:
            check_encoding(value)
    except OptionError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _data_options(function):
    for option in reversed([
        click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False), help="CSV/JSONL (text, label) or a text file (causal LM)."),
        click.option("--text-column", default=None, help="Column holding the text [text]."),
        click.option("--label-column", default=None, help="Column holding the label [label]."),
        click.option("--encoding", default=None, callback=_known_encoding, help="File encoding [utf-8], e.g. latin-1."),
        click.option("--dedupe/--no-dedupe", default=None, help="Drop texts equal after normalisation (retweets)."),
        click.option("--test-split", type=click_type(DataSpec, "test_split"), default=None, help="Held-out fraction, chosen by text hash [0.2]."),
        click.option("--max-samples", type=click_type(DataSpec, "max_samples"), default=None, help="Use a fixed subset of this many examples."),
    ]):  # fmt: skip
        function = option(function)
    return function


def _monitor_options(function):
    for option in reversed([
        click.option("--eval-every", type=click.IntRange(min=1), default=None, help="Evaluate every N steps [after each epoch]."),
        click.option("--early-stopping", "early_metric", default=None, metavar="METRIC",
                     help="Stop when this eval metric (accuracy, f1_macro, roc_auc, loss, perplexity) stops improving; keep the best weights."),
        click.option("--patience", type=click.IntRange(min=1), default=3, show_default=True, help="Evaluations without improvement before stopping."),
        click.option("--min-delta", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Smallest change that counts as an improvement."),
        click.option("--alert", "alert_rules", multiple=True, metavar="RULE=THRESHOLD[:warn|stop]",
                     help="Alert rule, repeatable: nan=stop, loss_spike=4, grad_norm=100, throughput_drop=0.5, memory_mb=8000 "
                          "(defaults: nan=stop, loss_spike=4:warn)."),
        click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True, help="Print the step monitor every N steps."),
        click.option("--log-file", type=click.Path(dir_okay=False), default=None, help="Append every step, eval and alert as JSON lines."),
        click.option("--tensorboard", "tensorboard_dir", type=click.Path(file_okay=False), default=None,
                     help="Write TensorBoard event files here (pip install 'adapterhub[tensorboard]')."),
    ]):  # fmt: skip
        function = option(function)
    return function


def _monitor_settings(eval_every, early_metric, patience, min_delta, alert_rules, log_every, log_file, tensorboard_dir):
    from adapterhub.alerts import parse_alert
    from adapterhub.monitor import EarlyStopping, MonitorSettings

    early = EarlyStopping(early_metric, patience, min_delta) if early_metric else None
    return MonitorSettings(log_every, log_file, tensorboard_dir, [parse_alert(rule) for rule in alert_rules], eval_every, early)


@cli.command("train")
@click.option("--base", required=True, help="Local base model directory or .gguf file.")
@click.option("--task", type=click.Choice(["seq-cls", "causal-lm"]), default="seq-cls", show_default=True)
@click.option("--method", required=True, help="Adapter method (see `adapterhub plugins`).")
@click.option("-o", "--option", "method_options", multiple=True, metavar="KEY=VALUE", help="Method option, repeatable (e.g. -o r=16).")
@click.option("--quantize", default=None, help="Load the base quantized (e.g. nf4, int8).")
@_data_options
@click.option("--epochs", type=click_type(TrainSettings, "epochs"), default=3, show_default=True)
@click.option("--batch-size", type=click_type(TrainSettings, "batch_size"), default=16, show_default=True)
@click.option("--lr", type=click_type(TrainSettings, "learning_rate"), default=5e-4, show_default=True)
@click.option("--max-length", type=click_type(TrainSettings, "max_length"), default=128, show_default=True, help="Max tokens per text (classification).")
@click.option("--block-size", type=click_type(TrainSettings, "block_size"), default=128, show_default=True, help="Tokens per block (causal LM).")
@click.option("--class-weights", type=click_type(TrainSettings, "class_weights"), default="none", show_default=True,
              help="balanced: weigh each label's loss by n / (labels x its count), for skewed classes (classification).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", type=click.Path(file_okay=False), default=None, help="Also keep the adapter in this directory.")
@click.option("--push", default=None, metavar="NAME", help="Push the trained adapter to the registry under NAME.")
@click.option("--tag", "tags", multiple=True, help="Tag for the pushed version, repeatable.")
@click.option("--registry", "registry_root", default=None, envvar="ADAPTERHUB_REGISTRY", help="Registry root [$ADAPTERHUB_HOME/registry].")
@_monitor_options
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars (training, and loading the base).")
def train_command(base, task, method, method_options, quantize, data_path, text_column, label_column, encoding, dedupe,
                  test_split, max_samples, epochs, batch_size, lr, max_length, block_size, class_weights, seed, output,
                  push, tags, registry_root, eval_every, early_metric, patience, min_delta, alert_rules, log_every, log_file,
                  tensorboard_dir, as_json, no_progress) -> None:  # fmt: skip
    """Train an adapter on a frozen base, evaluate it each epoch and push it to the registry.

    Under `torchrun --nproc_per_node N` or `accelerate launch` the same command trains data-parallel:
    --batch-size is the global batch, metrics are combined over all ranks and only rank 0 pushes.
    """
    from adapterhub.options import parse_pairs
    from adapterhub.workflow import TrainJob, train_adapter

    if no_progress:  # the base's "Loading weights" bar as well as ours
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()

    given = dict(text_column=text_column, label_column=label_column, encoding=encoding, dedupe=dedupe,
                 test_split=test_split, max_samples=max_samples)  # fmt: skip
    data = DataSpec(data_path, seed=seed, **{name: value for name, value in given.items() if value is not None})
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, learning_rate=lr, max_length=max_length,
                             block_size=block_size, class_weights=class_weights, seed=seed)  # fmt: skip
    monitor = _monitor_settings(eval_every, early_metric, patience, min_delta, alert_rules, log_every, log_file, tensorboard_dir)
    job = TrainJob(base, method, data, task, parse_pairs(list(method_options)), settings, quantize, output, push,
                   list(tags), registry_root, progress=not no_progress, monitor=monitor)  # fmt: skip
    outcome = train_adapter(job)
    if not outcome.is_main:
        return  # rank 0 reports for the whole data-parallel run
    result = outcome.result
    summary = {
        "metrics": result.metrics,
        "data": outcome.manifest.data_summary,
        "train_seconds": round(result.train_seconds, 2),
        "steps": result.steps,
        "skipped_steps": result.skipped_steps,
        "samples_per_s": round(result.samples_per_s, 2),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "peak_memory_mb": round(result.peak_memory_mb, 1),
        "world_size": outcome.world_size,
        "stopped_early": result.stopped_early,
        "best_step": result.best_step,
        "alerts": result.alerts,
        "trainable_parameters": outcome.trainable_parameters,
        "adapter_bytes": outcome.adapter_bytes,
        "adapter_dir": str(outcome.adapter_dir),
        "pushed": outcome.record.ref if outcome.record else None,
    }
    if as_json:
        echo_json(summary)
        return
    for key, value in summary.items():
        click.echo(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


@cli.command("eval")
@click.argument("ref")
@click.option("--base", required=True, help="Local base model directory or .gguf file.")
@click.option("--quantize", default=None, help="Load the base quantized (e.g. nf4).")
@_data_options
@click.option("--force", is_flag=True, help="Load even if the adapter was trained on another base.")
@click.option("--registry", "registry_root", default=None, envvar="ADAPTERHUB_REGISTRY")
@click.option("--save-metrics", is_flag=True, help="Record the metrics on the registry entry.")
@click.option("--json", "as_json", is_flag=True)
def eval_command(ref, base, quantize, data_path, text_column, label_column, encoding, dedupe, test_split, max_samples,
                 force, registry_root, save_metrics, as_json) -> None:  # fmt: skip
    """Evaluate registry adapter REF (name, name@version or name:tag) on the held-out split of --data.

    The split settings recorded at training time are reused, so the same file gives the same test set.
    """
    from adapterhub_registry import Registry

    from adapterhub.workflow import evaluate_adapter, recorded_data_spec

    registry = Registry(registry_root)
    record = registry.resolve(ref)
    data = recorded_data_spec(
        record.manifest, data_path, text_column=text_column, label_column=label_column, encoding=encoding,
        dedupe=dedupe, test_split=test_split, max_samples=max_samples,
    )  # fmt: skip
    metrics = evaluate_adapter(record.ref, base, data, quantize=quantize, registry_root=registry_root, force=force)
    if save_metrics:
        registry.set_metrics(record.ref, {f"eval_{k}": v for k, v in metrics.items()})
    if as_json:
        echo_json({"adapter": record.ref, "metrics": metrics})
        return
    click.echo(f"adapter: {record.ref}")
    for key, value in metrics.items():
        click.echo(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")


cli.add_command(registry_group)
cli.add_command(serve_command)
cli.add_command(bench_command)  # benchmarks/: adapterhub vs plain peft, results in benchmarks/results
cli.add_command(continual_group)  # one adapter per task of a sequence, and a router between them


def run_command(command: click.Command, argv: list[str] | None, prog_name: str) -> int:
    """Run a click command; errors we raise on purpose become one ``error:`` line and exit status 1."""
    from adapterhub_registry import RegistryError

    from adapterhub.errors import AdapterHubError

    try:
        status = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.UsageError as exc:  # one line naming the flag and its valid values, not click's usage block
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (AdapterHubError, RegistryError) as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    return status if isinstance(status, int) else 0  # `ctx.exit(n)` (e.g. `registry verify` finding damage)


def main(argv: list[str] | None = None) -> int:
    return run_command(cli, argv, "adapterhub")


if __name__ == "__main__":
    sys.exit(main())
