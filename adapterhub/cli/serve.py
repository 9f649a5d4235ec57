"""``adapterhub serve``: flags -> ``ServeSpec`` -> ``build_server`` -> uvicorn (or, with ``--replicas``, Ray Serve).

The flags are made from the fields of ``ServeSpec``, ``ServerSettings`` and ``AlertThresholds``
(``adapterhub.server.settings``), so their defaults, limits and help are written once, there; click refuses a
value out of range, naming the flag, before anything is loaded.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from pathlib import Path
from typing import Any

import click

from adapterhub.cli.flags import base_help, model_task_option, placement_options, registry_option, stacked
from adapterhub.errors import OptionError
from adapterhub.options import setting_option
from adapterhub.server.settings import AlertThresholds, ServerSettings, ServeSpec, default_model_name
from adapterhub.settings import Placement


class ServeCommand(click.Command):
    """``serve`` refuses a bad flag (out of range, wrong type, unknown) with one ``error:`` line naming the option
    and its valid values, as it refuses everything else, instead of click's usage block: the line is what ends up
    in the log of a service manager or a container."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise OptionError(f"{exc.format_message()} See `adapterhub serve --help`.") from None


def check_exposure(host: str, api_key: str | None, allow_unauthenticated: bool) -> None:
    """Refuse to serve without a key on an address other machines can reach, unless told to."""
    if api_key is not None or allow_unauthenticated or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False  # a host name: it may resolve to any interface
    if not loopback:
        raise OptionError(f"--host {host} lets other machines reach the server, and it has no --api-key (or "
                          f"ADAPTERHUB_API_KEY): set a key, or pass --allow-unauthenticated to serve anyone who can connect")  # fmt: skip


def _fields_of(options_class: type, flags: dict[str, Any]) -> dict[str, Any]:
    """The values of ``flags`` (click parameters, named after the fields they set) that ``options_class`` has."""
    return {field.name: flags[field.name] for field in dataclasses.fields(options_class) if field.name in flags}


def spec_from_flags(flags: dict[str, Any]) -> ServeSpec:
    """The ``ServeSpec`` of ``serve``'s flags (its click parameters but --host, --port and the like), each flag
    named after the field it sets. What the command line fills in itself: the model name from the base's
    directory or file name, the labels from a comma-separated list."""
    settings = ServerSettings(**{
        **_fields_of(ServerSettings, flags),
        "alerts": AlertThresholds(**_fields_of(AlertThresholds, flags)),
        "model_name": flags["model_name"] or default_model_name(flags["base"]),
    })  # fmt: skip
    return ServeSpec(**{
        **_fields_of(ServeSpec, flags),
        "settings": settings,
        "placement": Placement(**_fields_of(Placement, flags)),
        "labels": tuple(flags["labels"].split(",")) if flags["labels"] else None,
        "preload": tuple(flags["preload"]),
    })  # fmt: skip


# The flags of ``ServeSpec``: which base, how it is loaded, the adapter pool and what it serves from the start.
_spec_options = stacked(
    setting_option(ServeSpec, "base", help=base_help("Local base model directory or .gguf file.")),
    model_task_option(None, "[that of the --router sequence or of the first --load adapter, else causal-lm]"),
    setting_option(ServeSpec, "quantize"),
    placement_options,
    setting_option(ServeSpec, "labels"),
    setting_option(ServeSpec, "slots"),
    setting_option(ServeSpec, "max_rank"),
    setting_option(ServeSpec, "host_cache"),
    setting_option(ServeSpec, "threads", show_default=False),
    setting_option(ServeSpec, "pack_weights"),
    setting_option(ServeSpec, "preload", "--load", multiple=True, metavar="REF", show_default=False),
    setting_option(ServeSpec, "router", metavar="SEQUENCE"),
    registry_option,
)  # fmt: skip

# The flags of ``ServerSettings`` and its ``AlertThresholds``.
_settings_options = stacked(
    setting_option(ServerSettings, "max_batch_size"),
    setting_option(ServerSettings, "max_wait_ms"),
    setting_option(ServerSettings, "max_input_tokens"),
    setting_option(ServerSettings, "max_new_tokens"),
    setting_option(ServerSettings, "max_body_bytes"),
    setting_option(AlertThresholds, "p95_ms", "--alert-p95-ms"),
    setting_option(AlertThresholds, "memory_mb", "--alert-memory-mb"),
    setting_option(ServerSettings, "batching"),
    setting_option(ServerSettings, "max_running"),
    setting_option(ServerSettings, "prefill_chunk"),
    setting_option(ServerSettings, "prefix_cache_mb"),
    setting_option(ServerSettings, "max_waiting"),
    setting_option(ServerSettings, "model_name", default=None, show_default=False),  # default: from --base
    setting_option(ServerSettings, "api_key", envvar="ADAPTERHUB_API_KEY", show_envvar=True),
)  # fmt: skip


@click.command("serve", cls=ServeCommand)
@_spec_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port to listen on.")
@_settings_options
@click.option("--allow-unauthenticated", is_flag=True, help="Serve on a non-loopback address without --api-key.")
@setting_option(ServeSpec, "remote", metavar="REMOTE")
@setting_option(ServerSettings, "allow_lora_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--replicas",
    type=click.IntRange(min=2),
    default=None,
    help="Serve on N Ray Serve replicas, each request routed to one already holding its adapter (pip install "
    "'adapterhub[ray]'); with --remote, each node fetches what its replica serves into its own registry (no shared disk).",
)
def serve_command(host: str, port: int, allow_unauthenticated: bool, replicas: int | None, **flags: Any) -> None:
    """Serve one base model over HTTP with per-request adapters from the registry, batched across adapters
    (OpenAI-compatible routes under /v1/, with continuous batching)."""
    check_exposure(host, flags["api_key"], allow_unauthenticated)
    spec = spec_from_flags(flags)
    if replicas is not None:
        return _serve_replicas(spec, replicas, host, port)
    import uvicorn

    from adapterhub.server.build import build_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    built = build_server(spec)
    for loaded in built.loaded:
        click.echo(f"loaded {loaded}")
    if built.state.router is not None:
        click.echo(f"routing sequence {spec.router}: tasks {', '.join(built.state.router.names)}")
    uvicorn.run(built.app, host=host, port=port, log_level="info")


def _serve_replicas(spec: ServeSpec, replicas: int, host: str, port: int) -> None:
    """``--replicas N``: refuse what replicas cannot serve, then deploy on Ray Serve."""
    if spec.router is not None:
        raise OptionError(
            "--router is not served with --replicas yet: run one server for a continual-learning sequence"
        )
    if spec.settings.allow_lora_dir is not None:
        raise OptionError("--allow-lora-dir is not served with --replicas: import PEFT directories with "
                          "`adapterhub registry import-peft` and name them by their ref")  # fmt: skip
    try:
        from adapterhub.server.ray_serve.launch import serve_replicas
    except ModuleNotFoundError as exc:
        raise OptionError(
            f"--replicas runs on Ray Serve, which is not installed ({exc}): pip install 'adapterhub[ray]'"
        ) from None
    serve_replicas(spec, replicas, host, port)
