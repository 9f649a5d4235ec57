"""Command-line options that several ``adapterhub`` commands take, defined once so they read the same everywhere."""

from __future__ import annotations

import click

from adapterhub.options import setting_option
from adapterhub.packaged import BASE, help_names
from adapterhub.settings import DataSpec

registry_option = click.option(
    "--registry", "registry_root", default=None, envvar="ADAPTERHUB_REGISTRY", metavar="PATH",
    help="Registry root [$ADAPTERHUB_REGISTRY, else $ADAPTERHUB_HOME/registry].",
)  # fmt: skip
"""``--registry PATH``: the registry a command reads or writes (``registry_root`` in the command's arguments)."""

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
"""``--json``: print the command's outcome as JSON (``as_json`` in the command's arguments)."""


def base_help(text: str) -> str:
    """The help of a ``--base`` flag: ``text`` (what it is) and the packaged names it takes as well."""
    return f"{text.removesuffix('.')}; or a packaged name, if no such path exists: {help_names(BASE)}."


def model_task_option(default: str | None, help: str):
    """``--model-task`` (``--task`` too, its older name): what the base's head computes (``adapterhub.model_tasks``);
    ``model_task`` in the command's arguments."""
    from adapterhub.model_tasks import NAMES

    return click.option("--model-task", "--task", "model_task", type=click.Choice(NAMES), default=default,
                        show_default=default is not None, help=help)  # fmt: skip


def stacked(*options):
    """One decorator applying click ``options`` in the order given (as if written one above the other)."""

    def apply(function):
        for option in reversed(options):
            function = option(function)
        return function

    return apply


def placement_options(function):
    """``--device`` and ``--dtype`` (``adapterhub.settings.Placement``): where the base runs and in which precision;
    ``device`` and ``dtype`` in the command's arguments."""
    from adapterhub.options import setting_option
    from adapterhub.settings import Placement

    device = setting_option(Placement, "device", metavar="auto|cpu|cuda|cuda:N")
    return stacked(device, setting_option(Placement, "dtype"))(function)


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


# The flags of ``DataSpec``: defaults None, so ``eval`` can tell a flag given from one to take from the record.
data_options = stacked(
    setting_option(DataSpec, "path", "--data", type=click.Path(dir_okay=False)),
    setting_option(DataSpec, "text_column", override=True),
    setting_option(DataSpec, "label_column", override=True),
    setting_option(DataSpec, "encoding", override=True, callback=_known_encoding),
    setting_option(DataSpec, "dedupe", "--dedupe/--no-dedupe", override=True),
    setting_option(DataSpec, "test_split", override=True),
    setting_option(DataSpec, "max_samples", override=True),
)  # fmt: skip


VERBOSE_KEY = "adapterhub.verbose"


def _remember_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta[VERBOSE_KEY] = value  # meta is shared by the contexts of every subcommand
    return value


verbose_option = click.option(
    "--verbose", is_flag=True, callback=_remember_verbose,
    help="Also show the model libraries' warnings, logs and progress bars, and why each op runs on the "
    "implementation it does (`adapterhub --verbose train ...`).",
)  # fmt: skip
"""``adapterhub --verbose``: the top-level flag; a command reads it with ``verbose_requested()``."""


def verbose_requested() -> bool:
    """Whether ``adapterhub --verbose`` was given (False outside a command, e.g. when called from Python)."""
    context = click.get_current_context(silent=True)
    return bool(context and context.meta.get(VERBOSE_KEY, False))
