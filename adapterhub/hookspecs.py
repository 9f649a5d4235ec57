"""The whole plugin contract: every hook a plugin can implement.

A plugin is a module (usually its own pip distribution) registered under the entry point group
``adapterhub``; it implements any of these with ``@adapterhub.hookimpl``. Each contribution hook returns a
list of plain spec dataclasses from ``adapterhub.specs`` so the core can check names for conflicts and show
what each plugin contributes. The core checks the contract when it loads plugins: a ``hookimpl`` whose
name is not one of these hooks refuses the whole plugin (``adapterhub plugins`` shows why), and a hook that
returns anything but a list of its spec type is reported and ignored.

Plugin modules are imported whenever the CLI lists its commands, so keep their top level import-light: import
torch, peft or triton inside the functions that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # annotations only: plugins import this module without click or the registry
    import click

    from adapterhub.specs import KernelSpec, MethodSpec, QuantizerSpec
    from adapterhub_registry.remote_store import RemoteStoreSpec

hookspec = pluggy.HookspecMarker("adapterhub")

# A hookspec has no body: pluggy never calls it, it reads its name, arguments and docstring only.
# mypy: disable-error-code="empty-body"


@hookspec
def adapterhub_methods() -> list[MethodSpec]:
    """Return the adapter methods (LoRA, IA3, ...) the plugin provides."""


@hookspec
def adapterhub_kernels() -> list[KernelSpec]:
    """Return accelerated implementations of named ops (``adapterhub.kernels``), each with a support check."""


@hookspec
def adapterhub_quantizers() -> list[QuantizerSpec]:
    """Return ways to load the frozen base quantized (nf4, int8, ...)."""


@hookspec
def adapterhub_commands(cli: click.Group) -> None:
    """Add subcommands to the ``adapterhub`` click group passed in as ``cli``; returns nothing."""


@hookspec
def adapterhub_remote_stores() -> list[RemoteStoreSpec]:
    """Return remote registry backends, one per URL scheme (``s3``, ``file``, ...), each opening a store with
    atomic create and compare-and-swap."""
