"""``adapterhub continual ...``: train a task sequence from a plan, show it, route inputs, evaluate it, merge its adapters."""

from __future__ import annotations

import click

from adapterhub.cli.flags import base_help, json_option, placement_options, registry_option
from adapterhub.cli.merge import merge_options, report, summary
from adapterhub.cli.output import echo_json
from adapterhub.merging import HEAD_MODES


def _registry(root):
    from adapterhub_registry import Registry

    return Registry(root)


@click.group("continual")
def continual_group() -> None:
    """Continual learning: one adapter per task of a sequence on one frozen base, and a router between them.

    A plan (JSON or TOML) lists the tasks in order; see adapterhub/continual/plan.py for its keys.
    """


@continual_group.command("train")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@registry_option
@click.option("--retrain", is_flag=True, help="Train every task again, even those whose adapter is up to date.")
@placement_options
@click.option("--no-progress", is_flag=True, help="Hide the per-step progress bar.")
@json_option
def train_command(plan_path, registry_root, retrain, device, dtype, no_progress, as_json) -> None:
    """Train the tasks of PLAN in order, one adapter each, and push them tagged task-<task> and sequence-<name>.

    Tasks whose adapter already exists (same data, settings and base) are kept, so appending a task to the
    plan and running this again trains only the new one.
    """
    from adapterhub.continual.plan import load_plan
    from adapterhub.continual.sequence import train_sequence
    from adapterhub.distributed import launched_as_main
    from adapterhub.settings import Placement

    placement = Placement(device, dtype)
    plan = load_plan(plan_path)
    runs = train_sequence(plan, registry=_registry(registry_root), retrain=retrain, progress=not no_progress,
                          log=lambda line: click.echo(line, err=True), placement=placement)  # fmt: skip
    if not launched_as_main():
        return  # rank 0 reports for the whole data-parallel run
    if as_json:
        echo_json({"sequence": plan.sequence, "tasks": [run.to_dict() for run in runs]})
        return
    for run in runs:
        state = "trained" if run.trained else "kept"
        click.echo(
            f"{run.task:<20} {run.record.ref:<32} {state:<8} accuracy={run.record.metrics.get('accuracy', float('nan')):.4f}"
        )


@continual_group.command("show")
@click.argument("sequence")
@registry_option
@json_option
def show_command(sequence, registry_root, as_json) -> None:
    """The tasks of SEQUENCE in order: adapter, labels, router prototypes and recorded metrics."""
    from adapterhub.continual.router import Router

    registry = _registry(registry_root)
    router = Router.from_registry(sequence, registry)
    rows = [{"task": t.name, "position": t.position, "adapter": t.ref, "labels": list(t.labels),
             "prototypes": len(t.prototypes), "metrics": registry.resolve(t.ref).metrics} for t in router.tasks]  # fmt: skip
    if as_json:
        echo_json({"sequence": sequence, "base": router.base_fingerprint, "tasks": rows})
        return
    click.echo(f"sequence {sequence} on base {router.base_fingerprint}")
    for row in rows:
        accuracy = row["metrics"].get("accuracy")
        shown = f"accuracy={accuracy:.4f}" if accuracy is not None else ""
        click.echo(
            f"{row['position'] + 1}. {row['task']:<20} {row['adapter']:<32} labels={','.join(row['labels'])} {shown}"
        )


@continual_group.command("route")
@click.argument("sequence")
@click.argument("texts", nargs=-1, required=True)
@click.option(
    "--base", required=True, help=base_help("The base model the sequence was trained on (directory or .gguf).")
)
@click.option("--quantize", default=None, help="Load the base quantized (e.g. nf4).")
@registry_option
@json_option
def route_command(sequence, texts, base, quantize, registry_root, as_json) -> None:
    """Which task adapter of SEQUENCE each TEXT goes to (nearest task prototype of the frozen base's features)."""
    from adapterhub.continual.router import Router

    router = Router.from_registry(sequence, _registry(registry_root))
    router.load_base(base, quantize)
    routes = [{"text": text, "task": r.task.name, "adapter": r.task.ref, "similarity": round(r.similarity, 4)}
              for text, r in zip(texts, router.routes(list(texts)))]  # fmt: skip
    if as_json:
        echo_json(routes)
        return
    for route in routes:
        click.echo(f"{route['task']:<20} {route['adapter']:<32} {route['similarity']:.3f}  {route['text']}")


@continual_group.command("eval")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option(
    "--sequence",
    default=None,
    metavar="NAME",
    help="Evaluate sequence NAME's adapters on PLAN's tasks and data instead of the plan's own (e.g. the "
    "per-task merge of `adapterhub continual merge --heads per-task`).",
)
@registry_option
@json_option
def eval_command(plan_path, sequence, registry_root, as_json) -> None:
    """Evaluate the trained sequence of PLAN on every task's held-out split: with oracle task ids, with the
    router, and how often the router picks the right task."""
    import dataclasses

    from adapterhub.continual.evaluate import evaluate_sequence
    from adapterhub.continual.plan import load_plan

    plan = load_plan(plan_path)
    if sequence is not None:
        plan = dataclasses.replace(plan, sequence=sequence)
    result = evaluate_sequence(plan, _registry(registry_root))
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(f"{'task':<20} {'examples':>8} {'oracle':>8} {'routed':>8} {'router':>8}")
    for task in result.tasks:
        oracle = task.oracle.get("accuracy", task.oracle.get("loss"))
        routed = "-" if task.routed_accuracy is None else f"{task.routed_accuracy:.4f}"
        click.echo(f"{task.task:<20} {task.examples:>8} {oracle:>8.4f} {routed:>8} {task.router_accuracy:>8.4f}")
    routed = "-" if result.average_routed is None else f"{result.average_routed:.4f}"
    metric = "accuracy" if "accuracy" in result.tasks[0].oracle else "loss"
    click.echo(f"{'average':<20} {'':>8} {result.average(metric):>8.4f} {routed:>8} {result.router_accuracy:>8.4f}")


@continual_group.command("merge")
@click.argument("sequence")
@click.option("--name", default=None, help="Registry name of the merged adapter [<SEQUENCE>-merged].")
@click.option(
    "--heads",
    type=click.Choice(HEAD_MODES),
    default="mean",
    show_default=True,
    help="mean: one version with the weighted mean of the heads (tasks must share their labels); per-task: "
    "one version <NAME>-<task> per task, the merged LoRA with that task's own head, forming sequence NAME.",
)
@merge_options
def merge_command(
    sequence, name, heads, base_path, weights, combination, density, seed, tags, registry_root, as_json
) -> None:
    """Merge the task adapters of SEQUENCE, in task order, into one LoRA with a recorded recipe (as `adapterhub
    merge`), with one weighted-mean head (refused when the tasks' heads classify into different labels) or each
    task's own head (--heads per-task)."""
    from adapterhub.merging import merge_sequence

    results = merge_sequence(_registry(registry_root), sequence, base_path, name=name, heads=heads, weights=weights,
                             combination=combination, density=density, seed=seed, tags=tags)  # fmt: skip
    if as_json and heads == "per-task":
        echo_json([summary(result) for result in results])
        return
    for result in results:
        report(result, as_json)
