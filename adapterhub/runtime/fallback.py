"""Adapters that cannot live in a slot (DoRA, IA3, prefix tuning, bottleneck, ...) swap through peft.

Called by ``AdapterPool``: one such adapter at a time is attached to the pooled base with
``adapterhub.adapters.load_adapter`` (the method's own load path), and detached again before another one
is attached. Slotted layers stay in place underneath: peft wraps them like any linear, since they are still
instances of their original class, and their slots are simply inactive while a peft adapter runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTuner

from adapterhub import adapters
from adapterhub.base import Base


class PeftAttached:
    """The one non-slottable adapter currently attached to the base through peft, if any."""

    def __init__(self, base: Base) -> None:
        self.base = base
        self.key: str | None = None
        self.model: PeftModel | None = None
        self.swaps = 0

    def attach(self, key: str, peft_config: dict, tensors: dict[str, torch.Tensor], manifest: dict) -> PeftModel:
        """Make ``key`` the attached adapter (a no-op when it already is); the base was checked by the pool."""
        if self.key == key and self.model is not None:
            return self.model
        self.detach()
        self.model = adapters.load_adapter(self.base, peft_config, tensors, label=key, force=True, manifest=manifest)
        self.key = key
        self.swaps += 1
        return self.model

    def detach(self) -> None:
        """Take the attached adapter off the base, leaving the (slotted) base layers as they were."""
        if self.model is not None and isinstance(self.model.base_model, BaseTuner):
            self.model.base_model.unload()
        self.model, self.key = None, None

    @contextlib.contextmanager
    def bypassed(self) -> Iterator[None]:
        """Run the base (and its slots) without the attached peft adapter."""
        if self.model is None:
            yield
            return
        with self.model.disable_adapter():
            yield
