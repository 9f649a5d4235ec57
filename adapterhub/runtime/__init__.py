"""Serving side of adapterhub: resident adapter slots on one base, fast swaps, mixed-adapter batches.

``AdapterPool`` (pool.py) holds the slots and the three memory tiers; ``generate`` / ``classify``
(inference.py) run batches whose rows name different adapters; the HTTP server (``adapterhub.server``)
batches requests on top of them.
"""

from adapterhub.runtime.inference import Classified, Generated, GenerationSettings, classify, generate
from adapterhub.runtime.pool import AdapterPool, PoolStats
from adapterhub.runtime.sampling import SamplingParams, TokenLogprob

__all__ = [
    "AdapterPool",
    "PoolStats",
    "SamplingParams",
    "TokenLogprob",
    "GenerationSettings",
    "Generated",
    "Classified",
    "generate",
    "classify",
]
