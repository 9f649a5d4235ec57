"""The whole plugin contract: every hook a plugin can implement.

A plugin is a module (usually its own pip distribution) registered under the entry point group
``adapterhub``; it implements any of these with ``@adapterhub.hookimpl``. Each hook returns a list of
plain spec dataclasses from ``adapterhub.specs`` so the core can check names for conflicts and show
what each plugin contributes.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("adapterhub")


@hookspec
def adapterhub_methods() -> list:
    """Return ``MethodSpec`` objects: adapter methods (LoRA, IA3, ...) the plugin provides."""


@hookspec
def adapterhub_kernels() -> list:
    """Return ``KernelSpec`` objects: accelerated implementations of named ops, each with a support check."""


@hookspec
def adapterhub_quantizers() -> list:
    """Return ``QuantizerSpec`` objects: ways to load the frozen base quantized (nf4, int8, ...)."""


@hookspec
def adapterhub_commands(cli) -> None:
    """Add subcommands to the ``adapterhub`` click group passed in as ``cli``."""
