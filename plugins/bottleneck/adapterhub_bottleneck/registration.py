"""Teach peft the ``BOTTLENECK`` type so bottleneck adapters save, load and round-trip like built-in tuners.

Importing ``adapterhub_bottleneck`` calls ``register()``; after that ``peft.PeftModel.from_pretrained`` loads
a saved bottleneck adapter directory unchanged.
"""

from __future__ import annotations

from peft.utils import PeftType, register_peft_method

from .config import PEFT_TYPE, BottleneckConfig
from .model import BottleneckModel


def _add_peft_type_member(value: str) -> PeftType:
    """``register_peft_method`` only accepts names that are members of peft's ``PeftType`` enum, and Python
    enums have no public way to grow; add the member exactly where ``enum`` itself keeps members."""
    if value in PeftType._value2member_map_:
        return PeftType(value)
    member = str.__new__(PeftType, value)
    member._name_ = member._value_ = value
    member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_names_.append(value)
    PeftType._member_map_[value] = member
    PeftType._value2member_map_[value] = member
    type.__setattr__(PeftType, value, member)
    return member


def register() -> None:
    """Register the bottleneck tuner with peft (once per process)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    if PEFT_TYPE in PEFT_TYPE_TO_CONFIG_MAPPING:
        return
    _add_peft_type_member(PEFT_TYPE)
    register_peft_method(name=PEFT_TYPE.lower(), config_cls=BottleneckConfig, model_cls=BottleneckModel)
