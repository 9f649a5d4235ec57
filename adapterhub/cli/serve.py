"""``adapterhub serve``: load the base, create the adapter pool, preload adapters (and a sequence's task
router with ``--router``), run uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import math
from pathlib import Path

import click

from adapterhub.cli.flags import model_task_option, placement_options, registry_option
from adapterhub.errors import OptionError

POSITIVE = click.IntRange(min=1)


class NumberRange(click.FloatRange):
    """``click.FloatRange`` that also refuses nan, which compares false with both bounds and so passes it."""

    def convert(self, value, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number ({self})", param, ctx)
        return number


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


def default_model_name(base: str) -> str:
    """``models/smollm2`` -> ``smollm2``; ``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``SmolLM2-135M-Instruct.Q4_1``."""
    path = Path(base)
    return path.stem if path.suffix == ".gguf" else path.resolve().name


@click.command("serve", cls=ServeCommand)
@click.option("--base", required=True, help="Local base model directory or .gguf file.")
@model_task_option(None, "[that of the --router sequence or of the first --load adapter, else causal-lm]")
@click.option("--quantize", default=None, help="Load the base quantized (e.g. nf4, int8).")
@placement_options
@click.option(
    "--labels", default=None, help="Comma-separated class names (seq-cls; default: from the first --load adapter)."
)
@click.option(
    "--slots", type=POSITIVE, default=8, show_default=True, help="Adapters resident at once (per layer slots)."
)
@click.option("--max-rank", type=POSITIVE, default=16, show_default=True, help="Largest LoRA rank a slot holds.")
@click.option(
    "--host-cache",
    type=click.IntRange(min=0),
    default=64,
    show_default=True,
    help="Adapters kept in host memory besides those in slots (0: only those in slots).",
)
@click.option("--load", "preload", multiple=True, metavar="REF", help="Adapter to load at start, repeatable.")
@click.option(
    "--router",
    "sequence",
    default=None,
    metavar="SEQUENCE",
    help="Route requests naming a task (or task 'auto') to the adapters of this continual-learning sequence.",
)
@registry_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--max-batch-size", type=POSITIVE, default=16, show_default=True)
@click.option(
    "--max-wait-ms",
    type=NumberRange(0, 60_000),
    default=5.0,
    show_default=True,
    help="How long a request waits for others to batch with.",
)
@click.option("--max-input-tokens", type=POSITIVE, default=512, show_default=True)
@click.option(
    "--max-new-tokens", type=POSITIVE, default=256, show_default=True, help="Largest max_new_tokens a request may ask."
)
@click.option(
    "--alert-p95-ms", type=NumberRange(min=0), default=None, help="Log a warning when the p95 latency goes above this."
)
@click.option(
    "--alert-memory-mb",
    type=NumberRange(min=0),
    default=None,
    help="Log a warning when process memory goes above this.",
)
@click.option(
    "--batching",
    type=click.Choice(["continuous", "static"]),
    default="continuous",
    show_default=True,
    help="How /v1/ completions are scheduled: rows join and leave at every step, or the static batcher (whole batches).",
)
@click.option("--max-running", type=POSITIVE, default=16, show_default=True, help="Rows of the continuous batch.")
@click.option(
    "--prefill-chunk",
    type=POSITIVE,
    default=128,
    show_default=True,
    help="Prompt tokens prefilled per step: the longest a newcomer's prefill holds the running rows.",
)
@click.option(
    "--max-waiting",
    type=POSITIVE,
    default=256,
    show_default=True,
    help="Requests queued beyond the running rows; more get a 503.",
)
@click.option(
    "--model-name", default=None, help="The base's name as an OpenAI `model` [default: its directory or file name]."
)
@click.option(
    "--api-key",
    envvar="ADAPTERHUB_API_KEY",
    default=None,
    show_envvar=True,
    help="Require 'Authorization: Bearer KEY' on every route but /health.",
)
@click.option("--allow-unauthenticated", is_flag=True, help="Serve on a non-loopback address without --api-key.")
@click.option(
    "--remote",
    "remote_name",
    default=None,
    metavar="REMOTE",
    help="Resolve /v1/ model refs on this remote of the registry (`registry remote add`), fetching on a miss.",
)
@click.option(
    "--allow-lora-dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="/v1/load_lora_adapter may import PEFT directories inside this directory.",
)
@click.option(
    "--replicas",
    type=click.IntRange(min=2),
    default=None,
    help="Serve on N Ray Serve replicas, each request routed to one already holding its adapter (pip install 'adapterhub[ray]').",
)
def serve_command(base, model_task, quantize, device, dtype, labels, slots, max_rank, host_cache, preload, sequence, registry_root, host, port,
                  max_batch_size, max_wait_ms, max_input_tokens, max_new_tokens, alert_p95_ms,
                  alert_memory_mb, batching, max_running, prefill_chunk, max_waiting, model_name, api_key,
                  allow_unauthenticated, remote_name, allow_lora_dir, replicas) -> None:  # fmt: skip
    """Serve one base model over HTTP with per-request adapters from the registry, batched across adapters
    (OpenAI-compatible routes under /v1/, with continuous batching)."""
    import uvicorn

    from adapterhub.base import load_base, resolve_placement
    from adapterhub.continual.router import Router
    from adapterhub.manifest import Manifest
    from adapterhub.model_tasks import LOAD_DEFAULT
    from adapterhub.runtime import AdapterPool
    from adapterhub.server import AlertThresholds, ServerSettings, create_app
    from adapterhub.settings import Placement
    from adapterhub_registry import Registry

    check_exposure(host, api_key, allow_unauthenticated)
    if replicas is not None:
        try:
            from adapterhub.server.ray_serve.launch import serve_replicas
        except ModuleNotFoundError as exc:
            raise OptionError(
                f"--replicas runs on Ray Serve, which is not installed ({exc}): pip install 'adapterhub[ray]'"
            ) from None
        return serve_replicas(click.get_current_context().params)
    placed, precision = resolve_placement(**vars(Placement(device, dtype)))  # a GPU that is not there fails first
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = Registry(registry_root)
    remote = None
    if remote_name is not None:
        from adapterhub import plugins
        from adapterhub.server.remote_refs import RemoteRefs

        remote = RemoteRefs(registry, registry.remote(remote_name, stores=plugins.catalog().remote_store_specs()))
    router = Router.from_registry(sequence, registry) if sequence else None
    if router is not None and model_task not in (None, router.model_task):
        raise OptionError(f"sequence {sequence!r} is a {router.model_task} sequence; drop --model-task or pass "
                          f"--model-task {router.model_task}")  # fmt: skip
    recorded = Manifest.from_dict(registry.resolve(preload[0]).manifest).model_task if preload and not router else None
    model_task = model_task or (router.model_task if router else recorded or LOAD_DEFAULT)
    label_list = labels.split(",") if labels else None
    if model_task == "seq-cls" and not label_list:
        if not preload and router is None:
            raise OptionError(
                "a seq-cls server needs --labels, an adapter to --load or a --router sequence (their labels are used)"
            )
        label_list = (
            list(router.tasks[0].labels) if router else Manifest.from_dict(registry.resolve(preload[0]).manifest).labels
        )
    loaded = load_base(
        base, model_task=model_task, quantize=quantize, labels=label_list, device=placed, dtype=precision
    )
    pool = AdapterPool(loaded, slots=slots, max_rank=max_rank, host_capacity=host_cache, registry=registry)
    for ref in list(preload) + ([t.ref for t in router.tasks] if router else []):
        click.echo(f"loaded {pool.load(ref)} ({pool.kind(ref)})")
    if router is not None:
        router.bind(pool)  # features of the pooled base with no adapter active
        click.echo(f"routing sequence {sequence}: tasks {', '.join(router.names)}")
    settings = ServerSettings(max_batch_size, max_wait_ms, max_input_tokens, max_new_tokens,
                              alerts=AlertThresholds(alert_p95_ms, alert_memory_mb), batching=batching,
                              max_running=max_running, prefill_chunk=prefill_chunk, max_waiting=max_waiting,
                              model_name=model_name or default_model_name(base),
                              api_key=api_key, allow_lora_dir=Path(allow_lora_dir) if allow_lora_dir else None)  # fmt: skip
    uvicorn.run(create_app(pool, settings, router, remote), host=host, port=port, log_level="info")
