"""adapterhub: parameter-efficient fine-tuning adapters on one frozen, optionally quantized base model.

Kept import-light on purpose (no torch here): `adapterhub plugins` and third-party plugins import this
module for `hookimpl` and the spec dataclasses only.
"""

import pluggy

from adapterhub.quiet import silence_known_noise

silence_known_noise()  # before peft / transformers import bitsandbytes

__version__ = "0.1.0"

PLUGIN_API_VERSION = "1.1"
"""The version of what a plugin may rely on (docs/plugins.md), ``major.minor``, apart from the package version.

A minor version adds to the surface or renames a name behind a warning alias (``adapterhub.deprecation``), which
goes away no earlier than two minor versions later; a major version is the only kind that may break a plugin
without such a warning. 1.0: the surface of November 2026 (``Base.task``); 1.1: ``Base.model_task`` and
``adapterhub.model_tasks.peft_task_type``, the old names kept as aliases until 1.3.
"""

hookimpl = pluggy.HookimplMarker("adapterhub")
"""Decorator for a plugin's hook implementations: ``@adapterhub.hookimpl``."""

__all__ = ["PLUGIN_API_VERSION", "__version__", "hookimpl"]
