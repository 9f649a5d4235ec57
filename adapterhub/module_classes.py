"""Give one module instance extra behaviour by making its class a subclass of its own class, once per pair.

Used where the core changes how a layer of a loaded base computes (adapter slots, a quantized weight sent
to a kernel) without replacing the module: it keeps its identity, parameters and state dict, is still an
instance of its original class (so peft and bitsandbytes treat it as before), and is undone by putting the
original class back.
"""

from __future__ import annotations

_CLASSES: dict[tuple[type, type], type] = {}


def mixed_in(mixin: type, cls: type) -> type:
    """The class ``mixin`` + ``cls`` (``mixin`` first in the MRO), made once and reused."""
    if (mixin, cls) not in _CLASSES:
        _CLASSES[(mixin, cls)] = type(f"{mixin.__name__}{cls.__name__}", (mixin, cls), {"__module__": mixin.__module__})
    return _CLASSES[(mixin, cls)]
