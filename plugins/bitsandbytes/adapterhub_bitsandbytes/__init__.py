"""adapterhub quantizer plugin: load the frozen base as NF4 (QLoRA-style, double quant) or int8 via bitsandbytes.

transformers does the module replacement and weight packing; this plugin only chooses the settings.
"""

from __future__ import annotations

import importlib.util

import adapterhub
from adapterhub.specs import QuantizerSpec


def _unavailable() -> str | None:
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install bitsandbytes)"
    return None


def _nf4(dtype) -> dict:
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    }


def _int8(dtype) -> dict:
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}


@adapterhub.hookimpl
def adapterhub_quantizers() -> list[QuantizerSpec]:
    return [
        QuantizerSpec("nf4", "4-bit NormalFloat with double quantization (bitsandbytes)", _nf4, _unavailable),
        QuantizerSpec("int8", "8-bit LLM.int8() weights (bitsandbytes)", _int8, _unavailable),
    ]
