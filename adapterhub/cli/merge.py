"""``adapterhub merge``: combine registry adapters of one method into a new, recorded version, or replay a recorded merge."""

from __future__ import annotations

import click

from adapterhub.cli.flags import base_help, json_option, registry_option
from adapterhub.cli.output import echo_json
from adapterhub.merging import (
    COMBINATIONS,  # torch-free: adapterhub.merging imports torch and peft inside its functions
)


def parse_weights(ctx, param, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers (e.g. 0.5,0.5)") from None


def merge_options(function):
    """The flags of a merge recipe, shared with ``adapterhub continual merge``."""
    for option in reversed([
        click.option("--base", "base_path", required=True, help=base_help("The base model the inputs were trained on (directory or .gguf).")),
        click.option("--weights", callback=parse_weights, default=None, metavar="W,W,...",
                     help="One weight per input, in order [equal weights summing to 1]."),
        click.option("--combination", type=click.Choice(COMBINATIONS), default="linear", show_default=True,
                     help="peft's add_weighted_adapter combination."),
        click.option("--density", type=float, default=None, help="Fraction of each delta kept (ties, dare_*, magnitude_prune)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of dare's random drops."),
        click.option("--tag", "tags", multiple=True, help="Tag for the merged version, repeatable."),
        registry_option,
        json_option,
    ]):  # fmt: skip
        function = option(function)
    return function


def summary(result) -> dict:
    """A pushed merge as JSON: its ref, sha256, recipe, time and notes."""
    return {"merged": result.record.ref, "sha256": result.sha256, "seconds": round(result.seconds, 2),
            "recipe": result.recipe.to_dict(), "notes": result.notes}  # fmt: skip


def report(result, as_json: bool) -> None:
    """Print a pushed merge: its ref, sha256, recipe and time."""
    if as_json:
        echo_json(summary(result))
        return
    recipe = result.recipe
    inputs = ", ".join(f"{entry['ref']}×{w:g}" for entry, w in zip(recipe.inputs, recipe.weights))
    density = f" density={recipe.density:g}" if recipe.density is not None else ""
    click.echo(
        f"merged {result.record.ref}: {recipe.combination}{density} of {inputs} (sha256 {result.sha256[:12]}, {result.seconds:.1f} s)"
    )
    for note in result.notes:
        click.echo(f"note: {note}")


@click.command("merge")
@click.argument("name", required=False)
@click.option(
    "--from",
    "inputs",
    multiple=True,
    metavar="REF",
    help="An input adapter (name, name@version, name:tag), repeatable.",
)
@click.option(
    "--replay",
    "replay_ref",
    default=None,
    metavar="REF",
    help="Run the recipe recorded on REF again and check the weights are byte-identical (exit 1 if not).",
)
@merge_options
def merge_command(
    name, inputs, replay_ref, base_path, weights, combination, density, seed, tags, registry_root, as_json
) -> None:
    """Merge adapters --from the registry into NAME's next version, recording the recipe.

    The inputs must share one base and one method that merges (`adapterhub plugins`: capability mergeable, e.g.
    LoRA, IA3); the method refuses what it cannot combine (LoRA: DoRA and trained biases). The merged adapter is
    loaded back onto --base before it is pushed.
    """
    from adapterhub import merging
    from adapterhub.errors import OptionError
    from adapterhub_registry import Registry

    registry = Registry(registry_root)
    if replay_ref is not None:
        if name or inputs:
            raise OptionError("--replay re-runs a recorded recipe: give neither NAME nor --from with it")
        result, record = merging.replay(registry, replay_ref, base_path)
        same = result.sha256 == record.blob_sha256
        if as_json:
            echo_json(
                {
                    "replayed": record.ref,
                    "identical": same,
                    "recorded_sha256": record.blob_sha256,
                    "sha256": result.sha256,
                }
            )
        else:
            verdict = "identical" if same else "DIFFERS"
            click.echo(
                f"replayed {record.ref}: {verdict} (recorded sha256 {record.blob_sha256[:12]}, now {result.sha256[:12]})"
            )
        if not same:
            import peft
            import torch

            recipe = result.recipe
            if (recipe.peft, recipe.torch) != (peft.__version__, torch.__version__):
                click.echo(f"recorded with peft {recipe.peft} and torch {recipe.torch}, replayed with peft {peft.__version__} "
                           f"and torch {torch.__version__}: install those versions to reproduce it", err=True)  # fmt: skip
            click.get_current_context().exit(1)
        return
    if not name or not inputs:
        raise OptionError("give NAME and at least one --from REF (or --replay REF)")
    result = merging.merge(registry, name, inputs, base_path, weights=weights, combination=combination, density=density,
                           seed=seed, tags=tags)  # fmt: skip
    report(result, as_json)
