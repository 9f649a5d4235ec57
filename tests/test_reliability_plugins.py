"""Plugins that fail at registration or inside the CLI command hook are reported by name, and everything
else keeps working. Failures at import and inside contribution hooks are covered in test_plugins.py."""

from __future__ import annotations

import pytest
from test_plugins import install_fake_distribution, site_dir  # noqa: F401  (fixture)

from adapterhub import plugins
from adapterhub.cli import cli, main

# Valid command hook first (pluggy registers hookimpls in name order), then one pluggy rejects at register():
# `adapterhub_methods` takes no arguments.
WRONG_SIGNATURE = """
    import click
    import adapterhub

    @adapterhub.hookimpl
    def adapterhub_commands(cli):
        @cli.command("half-registered")
        def half():
            click.echo("should not exist")

    @adapterhub.hookimpl
    def adapterhub_methods(unexpected_argument):
        return []
"""

RAISING_COMMANDS = """
    import adapterhub

    @adapterhub.hookimpl
    def adapterhub_commands(cli):
        raise RuntimeError("command hook exploded")
"""


@pytest.fixture
def fresh_cli():
    """The CLI group re-reads plugin commands, and forgets them afterwards."""
    before = dict(cli.commands)
    cli._plugins_added = False
    yield cli
    cli.commands.clear()
    cli.commands.update(before)
    cli._plugins_added = False


def test_plugin_rejected_at_registration_is_reported_and_not_half_registered(site_dir, fresh_cli, capsys):
    install_fake_distribution(site_dir, "fakeplugin-signature", "fakeplugin_signature", WRONG_SIGNATURE)
    catalog = plugins.reload()
    info = {p.name: p for p in catalog.plugins}["fakeplugin_signature"]
    assert "PluginValidationError" in info.error and "unexpected_argument" in info.error
    assert not plugins.plugin_manager().has_plugin("fakeplugin_signature")
    assert catalog.method("lora").name == "lora"
    assert main(["--help"]) == 0
    assert "half-registered" not in capsys.readouterr().out
    assert main(["plugins"]) == 0
    assert "fakeplugin_signature" in capsys.readouterr().out


def test_plugin_whose_command_hook_raises_does_not_break_help_or_other_commands(site_dir, fresh_cli, capsys):
    install_fake_distribution(site_dir, "fakeplugin-cmdfail", "fakeplugin_cmdfail", RAISING_COMMANDS)
    plugins.reload()
    assert main(["--help"]) == 0
    captured = capsys.readouterr()
    assert "registry" in captured.out and "train" in captured.out
    assert "'fakeplugin_cmdfail' failed in adapterhub_commands: RuntimeError: command hook exploded" in captured.err
    assert main(["registry", "list"]) == 0
    assert "no adapters" in capsys.readouterr().out
    assert main(["plugins", "--json"]) == 0
    assert "command hook exploded" in capsys.readouterr().out  # listed under "problems"
