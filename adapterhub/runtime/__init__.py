"""Serving side of adapterhub: resident adapter slots on one base, fast swaps, mixed-adapter batches.

``AdapterPool`` (pool.py) holds the slots and the three memory tiers; ``generate`` / ``classify``
(inference.py) run batches whose rows name different adapters; the HTTP server (``adapterhub.server``)
batches requests on top of them. ``SamplingParams`` is the one type for how a request decodes, on every path.
"""

from adapterhub.deprecation import moved_names
from adapterhub.runtime.inference import Classified, Generated, StaticPathUnsupported, classify, generate
from adapterhub.runtime.pool import AdapterPool, PoolStats
from adapterhub.runtime.sampling import SamplingParams, TokenLogprob

__all__ = [
    "AdapterPool",
    "PoolStats",
    "SamplingParams",
    "TokenLogprob",
    "StaticPathUnsupported",
    "Generated",
    "Classified",
    "generate",
    "classify",
]

# GenerationSettings(max_new_tokens=..., do_sample=..., ...) builds the equivalent SamplingParams until it goes away
__getattr__ = moved_names(
    __name__, {"GenerationSettings": "adapterhub.runtime.inference.legacy_settings"}, since="1.1", removed_in="1.3"
)
