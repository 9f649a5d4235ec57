"""``adapterhub ui``: the registry's pages on their own, no base model loaded (``adapterhub serve`` mounts the
same pages at ``/ui`` with the serving views and the playground added). See docs/ui.md."""

from __future__ import annotations

from pathlib import Path

import click

from adapterhub.cli.flags import registry_option


@click.command("ui")
@registry_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8100, show_default=True, help="Port to listen on.")
@click.option("--api-key", envvar="ADAPTERHUB_API_KEY", show_envvar=True, default=None,
              help="Sign in with this key to move tags; without one the pages are read-only.")  # fmt: skip
@click.option("--bench-results", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Benchmark results folder shown at /ui/benchmarks [the harness's benchmarks/results].")  # fmt: skip
def ui_command(
    registry_root: str | None, host: str, port: int, api_key: str | None, bench_results: Path | None
) -> None:
    """Browse the registry in a web browser: adapters, versions, lineage, metrics, benchmarks (no model loaded)."""
    import uvicorn

    from adapterhub.web import ui_app
    from adapterhub_registry import Registry

    app = ui_app(Registry(registry_root), api_key=api_key, bench_results=bench_results)
    click.echo(f"adapterhub ui: http://{host}:{port}/ui/adapters" + ("" if api_key else " (read-only: no --api-key)"))
    uvicorn.run(app, host=host, port=port, log_level="warning")
