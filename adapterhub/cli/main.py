"""The ``adapterhub`` command line: plugins, train, eval, registry, serve and continual; plugins add their own commands.

Errors we raise on purpose (bad input, missing plugin, wrong base, corrupt file) are printed as one line
saying what to do, with exit status 1; anything else is a bug and keeps its traceback.

Starting must be quick (``adapterhub --help`` and ``adapterhub registry list`` in well under a second): this module
imports neither torch, transformers nor peft. Each command imports what it needs when it runs, the command groups
of other modules are imported when they are looked up, and plugins are loaded only for a name that is not built
in, or when ``--help`` lists every command.
"""

from __future__ import annotations

import importlib
import json
import sys

import click

from adapterhub import __version__
from adapterhub.cli.flags import (
    base_help,
    data_options,
    json_option,
    model_task_option,
    placement_options,
    registry_option,
    stacked,
    verbose_option,
    verbose_requested,
)
from adapterhub.cli.output import echo_json
from adapterhub.model_tasks import LOAD_DEFAULT, TRAIN_DEFAULT
from adapterhub.options import parse_pairs, setting_option
from adapterhub.settings import CheckpointSettings, DataSpec, EarlyStopping, MonitorSettings, Placement, TrainSettings

CORE_COMMANDS = {
    "registry": "adapterhub.cli.registry:registry_group",
    "serve": "adapterhub.cli.serve:serve_command",
    "continual": "adapterhub.cli.continual:continual_group",  # one adapter per task, and a router between them
    "zero-shot": "adapterhub.cli.zero_shot:zero_shot_command",  # prompting a causal LM: the baseline to beat
    "merge": "adapterhub.cli.merge:merge_command",  # registry adapters of one method into one recorded version
    "quickstart": "adapterhub.cli.quickstart:quickstart_command",  # the main job on the packaged model and data
    "ui": "adapterhub.cli.ui:ui_command",  # the registry's web pages, no model loaded (serve mounts them at /ui)
}
"""Commands of the core defined in other modules, by name: ``module:attribute``, imported when looked up."""


class _Group(click.Group):
    """The top-level group: built-in commands first, then the core's other commands (imported on first use), then
    plugin commands, loaded only when a name is neither or when ``--help`` lists them all."""

    def _with_plugins(self) -> None:
        # Each plugin is called on its own: one that raises is reported (here and by `adapterhub plugins`)
        # and must not take `--help` or the other commands down with it.
        if getattr(self, "_plugins_added", False):
            return
        self._plugins_added = True
        from adapterhub import plugins

        for problem in plugins.add_plugin_commands(self):
            click.echo(f"warning: {problem}; its commands may be unavailable", err=True)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._with_plugins()
        return sorted({*super().list_commands(ctx), *CORE_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in CORE_COMMANDS:
            module, _, attribute = CORE_COMMANDS[name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        if name not in self.commands:
            self._with_plugins()
        return super().get_command(ctx, name)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="adapterhub")
@verbose_option
def cli(verbose: bool) -> None:
    """Train, store and evaluate parameter-efficient adapters on one frozen base model."""
    from adapterhub.quiet import show_library_output

    show_library_output(verbose)


@cli.command("plugins")
@json_option
def plugins_command(as_json: bool) -> None:
    """List installed plugins, their versions and what each contributes (and any that failed to load)."""
    from adapterhub import PLUGIN_API_VERSION, plugins
    from adapterhub.kernels import kernel_report

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
    ops = kernel_report()
    if as_json:
        echo_json({"plugin_api_version": PLUGIN_API_VERSION, "plugins": rows, "problems": problems, "ops": ops})
        return
    click.echo(f"plugin API {PLUGIN_API_VERSION} (docs/plugins.md)")
    for row in rows:
        click.echo(f"{row['name']} ({row['distribution']} {row['version']})")
        if row["error"]:
            click.echo(f"  FAILED TO LOAD: {row['error']}")
            continue
        for kind in ("methods", "quantizers", "kernels", "remote_stores"):
            if row.get(kind):
                click.echo(f"  {kind.replace('_', ' ')}: {', '.join(row[kind])}")
        for method, method_capabilities in row["capabilities"].items():
            click.echo(f"  {method} capabilities: {', '.join(method_capabilities) or '-'}")
    verbose = verbose_requested()  # why each other implementation was passed over: only with --verbose
    for op in ops:
        passed = "; ".join(f"{name}: {why}" for name, why in op["passed_over"].items())
        click.echo(
            f"op {op['op']} on {op['device']}/{op['dtype']}: {op['active']}"
            + (f" (not: {passed})" if passed and verbose else "")
        )
    for problem in problems:
        click.echo(f"problem: {problem}")
    if not rows:
        click.echo("no plugins installed (pip install adapterhub-lora, ...)")


# The flags of ``TrainSettings`` that ``train`` offers, with the dataclass's defaults.
_train_options = stacked(
    setting_option(TrainSettings, "epochs"),
    setting_option(TrainSettings, "batch_size"),
    setting_option(TrainSettings, "grad_accum", metavar="N"),
    setting_option(TrainSettings, "gradient_checkpointing", is_flag=True),
    setting_option(TrainSettings, "learning_rate", "--lr"),
    setting_option(TrainSettings, "max_length"),
    setting_option(TrainSettings, "block_size"),
    setting_option(TrainSettings, "class_weights"),
    setting_option(TrainSettings, "seed"),
)  # fmt: skip


# The flags of ``CheckpointSettings``: checkpoint every N steps into a folder, and resume from it.
_checkpoint_options = stacked(
    setting_option(CheckpointSettings, "every", "--checkpoint-every", metavar="N"),
    setting_option(CheckpointSettings, "directory", "--checkpoint-dir", type=click.Path(file_okay=False)),
    setting_option(CheckpointSettings, "keep", "--keep-checkpoints", metavar="K"),
    setting_option(CheckpointSettings, "resume", is_flag=True),
)  # fmt: skip


# The flags of ``MonitorSettings`` and ``EarlyStopping``: what a run logs, its alerts, when it evaluates and stops.
_monitor_options = stacked(
    setting_option(MonitorSettings, "eval_every"),
    setting_option(EarlyStopping, "metric", "--early-stopping", required=False, default=None, metavar="METRIC"),
    setting_option(EarlyStopping, "patience"),
    setting_option(EarlyStopping, "min_delta"),
    setting_option(MonitorSettings, "alerts", "--alert", required=False, multiple=True, metavar="RULE=THRESHOLD[:warn|stop]"),
    setting_option(MonitorSettings, "log_every"),
    setting_option(MonitorSettings, "log_file", type=click.Path(dir_okay=False)),
    setting_option(MonitorSettings, "tensorboard_dir", "--tensorboard", type=click.Path(file_okay=False)),
)  # fmt: skip


def _monitor_settings(eval_every, metric, patience, min_delta, alerts, log_every, log_file, tensorboard_dir):
    """``MonitorSettings`` of the ``_monitor_options`` flags; an --alert rule that does not parse names itself."""
    from adapterhub.alerts import parse_alert

    early = EarlyStopping(metric, patience, min_delta) if metric else None
    return MonitorSettings(log_every=log_every, log_file=log_file, tensorboard_dir=tensorboard_dir,
                           alerts=[parse_alert(rule) for rule in alerts], eval_every=eval_every, early_stopping=early)  # fmt: skip


@cli.command("train")
@click.option("--base", required=True, help=base_help("Local base model directory or .gguf file."))
@model_task_option(TRAIN_DEFAULT, "What the base's head computes: labels from a text, or the next token.")
@click.option("--method", required=True, help="Adapter method (see `adapterhub plugins`).")
@click.option(
    "-o",
    "--option",
    "method_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Method option, repeatable (e.g. -o r=16).",
)
@click.option("--quantize", default=None, help="Load the base quantized (e.g. nf4, int8).")
@placement_options
@data_options
@_train_options
@_checkpoint_options
@click.option(
    "--output", type=click.Path(file_okay=False), default=None, help="Also keep the adapter in this directory."
)
@click.option("--push", default=None, metavar="NAME", help="Push the trained adapter to the registry under NAME.")
@click.option("--tag", "tags", multiple=True, help="Tag for the pushed version, repeatable.")
@registry_option
@_monitor_options
@json_option
@click.option("--no-progress", is_flag=True, help="Hide the progress bars (training, and loading the base).")
def train_command(base, model_task, method, method_options, quantize, device, dtype, path, text_column, label_column,
                  encoding, dedupe, test_split, max_samples, epochs, batch_size, grad_accum, gradient_checkpointing,
                  learning_rate, max_length, block_size, class_weights, seed, every, directory, keep, resume, output,
                  push, tags, registry_root, eval_every, metric, patience, min_delta, alerts, log_every, log_file,
                  tensorboard_dir, as_json, no_progress) -> None:  # fmt: skip
    """Train an adapter on a frozen base, evaluate it each epoch and push it to the registry.

    Under `torchrun --nproc_per_node N` or `accelerate launch` the same command trains data-parallel:
    --batch-size is the global batch, metrics are combined over all ranks and only rank 0 pushes.
    With --checkpoint-every N a run that dies continues from its newest checkpoint: the same command plus --resume.
    """
    from adapterhub.job_checks import checked_data
    from adapterhub.job_checks import method_options as checked_options

    given = dict(text_column=text_column, label_column=label_column, encoding=encoding, dedupe=dedupe,
                 test_split=test_split, max_samples=max_samples)  # fmt: skip
    data = DataSpec(path, seed=seed, **{name: value for name, value in given.items() if value is not None})
    options = parse_pairs(list(method_options))
    # The flags' own settings first, then the method's options and the data file: every mistake is reported in a
    # second, before torch is imported and the base loads.
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, max_length=max_length,
                             block_size=block_size, class_weights=class_weights, seed=seed, grad_accum=grad_accum,
                             gradient_checkpointing=gradient_checkpointing)  # fmt: skip
    monitor = _monitor_settings(eval_every, metric, patience, min_delta, alerts, log_every, log_file, tensorboard_dir)
    placement = Placement(device, dtype)
    checkpointing = CheckpointSettings(every, directory, keep, resume)
    checked_options(method, options)
    source = checked_data(data, model_task)  # read once: the job trains on what was checked
    from adapterhub.workflow import TrainJob, train_adapter

    if no_progress:  # the base's "Loading weights" bar as well as ours
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()

    job = TrainJob(base, method, data, model_task, options, settings, quantize, output, push,
                   list(tags), registry_root, progress=not no_progress, monitor=monitor, placement=placement,
                   checkpointing=checkpointing, source=source)  # fmt: skip
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
        "adapter_dir": str(outcome.adapter_dir) if outcome.adapter_dir else None,  # pushed: only in the registry
        "pushed": outcome.record.ref if outcome.record else None,
    }
    if as_json:
        echo_json(summary)
        return
    for key, value in summary.items():
        click.echo(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


@cli.command("eval")
@click.argument("ref")
@click.option("--base", required=True, help=base_help("Local base model directory or .gguf file."))
@click.option("--quantize", default=None, help="Load the base quantized (e.g. nf4).")
@placement_options
@data_options
@click.option("--force", is_flag=True, help="Load even if the adapter was trained on another base.")
@registry_option
@click.option("--save-metrics", is_flag=True, help="Record the metrics on the registry entry.")
@json_option
def eval_command(ref, base, quantize, device, dtype, path, text_column, label_column, encoding, dedupe, test_split, max_samples,
                 force, registry_root, save_metrics, as_json) -> None:  # fmt: skip
    """Evaluate registry adapter REF (name, name@version or name:tag) on the held-out split of --data.

    The split settings recorded at training time are reused, so the same file gives the same test set.
    """
    from adapterhub.job_checks import checked_data, recorded_data_spec
    from adapterhub.manifest import Manifest
    from adapterhub_registry import Registry

    placement = Placement(device, dtype)  # a bad --device fails before the registry is read
    registry = Registry(registry_root)
    record = registry.resolve(ref)
    data = recorded_data_spec(
        record.manifest, path, text_column=text_column, label_column=label_column, encoding=encoding,
        dedupe=dedupe, test_split=test_split, max_samples=max_samples,
    )  # fmt: skip
    manifest = Manifest.from_dict(record.manifest)  # its data checked before torch is imported, as in train
    source = checked_data(data, manifest.model_task or LOAD_DEFAULT, manifest.labels or None)
    from adapterhub.workflow import evaluate_adapter

    metrics = evaluate_adapter(record.ref, base, data, quantize=quantize, registry_root=registry_root, force=force,
                               placement=placement, source=source)  # fmt: skip
    if save_metrics:
        registry.set_metrics(record.ref, {f"eval_{k}": v for k, v in metrics.items()})
    if as_json:
        echo_json({"adapter": record.ref, "metrics": metrics})
        return
    click.echo(f"adapter: {record.ref}")
    for key, value in metrics.items():
        click.echo(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")


def run_command(command: click.Command, argv: list[str] | None, prog_name: str) -> int:
    """Run a click command; errors we raise on purpose become one ``error:`` line and exit status 1."""
    from adapterhub.errors import AdapterHubError
    from adapterhub_registry import RegistryError

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
