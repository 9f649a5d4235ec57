"""Plugins that fail at registration or inside the CLI command hook are reported by name, and everything
else keeps working; a plugin kernel that raises falls back to torch. Failures at import and inside
contribution hooks are in test_plugins.py; a raising kernel in a hand-built catalog in test_kernels.py (here
it comes through a real entry point, beside a kernel whose support check raises)."""

from __future__ import annotations

import importlib
import logging

import pytest
import torch
from test_plugins import install_fake_distribution, site_dir  # noqa: F401  (fixture)

from adapterhub import kernels, plugins
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


BROKEN_KERNELS = """
    import adapterhub
    from adapterhub.specs import KernelSpec

    calls = []

    def crashing_kernel(*args):
        calls.append(args)
        raise RuntimeError("kernel exploded")

    def crashing_check(device, dtype):
        raise ValueError("cannot even tell")

    @adapterhub.hookimpl
    def adapterhub_kernels():
        return [
            KernelSpec("lora_forward", "crashing", crashing_kernel, lambda device, dtype: None, priority=100),
            KernelSpec("lora_forward", "unsure", crashing_kernel, crashing_check, priority=200),
        ]
"""


def test_plugin_kernel_that_raises_falls_back_to_torch_once_with_a_warning(site_dir, caplog):
    install_fake_distribution(site_dir, "fakeplugin-kernels", "fakeplugin_kernels", BROKEN_KERNELS)
    plugins.reload()
    choice = kernels.select_kernel("lora_forward", "cpu", torch.float32)
    assert (choice.plugin, choice.name) == ("fakeplugin_kernels", "crashing")
    assert "support check raised ValueError: cannot even tell" in choice.passed_over["fakeplugin_kernels:unsure"]
    x, A, B = torch.randn(3, 8), torch.randn(2, 8), torch.randn(5, 2)
    with caplog.at_level(logging.WARNING, logger="adapterhub.kernels"):
        first, second = choice.fn(x, A, B, 0.5), choice.fn(x, A, B, 0.5)
    expected = kernels.lora_forward(x, A, B, 0.5)
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)
    warnings = [r for r in caplog.records if "fakeplugin_kernels:crashing" in r.getMessage()]
    assert len(warnings) == 1 and "kernel exploded" in warnings[0].getMessage()
    assert len(importlib.import_module("fakeplugin_kernels").calls) == 1  # not retried after it failed
