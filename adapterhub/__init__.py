"""adapterhub: parameter-efficient fine-tuning adapters on one frozen, optionally quantized base model.

Kept import-light on purpose (no torch here): `adapterhub plugins` and third-party plugins import this
module for `hookimpl` and the spec dataclasses only.
"""

import pluggy

from adapterhub.quiet import silence_known_noise

silence_known_noise()  # before peft / transformers import bitsandbytes

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("adapterhub")
"""Decorator for a plugin's hook implementations: ``@adapterhub.hookimpl``."""

__all__ = ["__version__", "hookimpl"]
