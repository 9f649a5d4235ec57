"""Turn user-given option values (CLI ``key=value`` strings or Python values) into a method's options dataclass.

The dataclass is the single source of truth: its field names are the valid options and its annotations
give the types, so every method gets the same validation and the same error messages for free.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from adapterhub.errors import OptionError


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """``["r=16", "dora=true"]`` -> ``{"r": "16", "dora": "true"}``."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"option {pair!r} is not of the form key=value (e.g. r=16)")
        values[key.strip().replace("-", "_")] = value.strip()
    return values


def _convert(name: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = json.loads(value) if value.startswith("[") else [v.strip() for v in value.split(",") if v.strip()]
        (item,) = typing.get_args(annotation)[:1] or (str,)
        return [_convert(name, v, item) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        lowered = str(value).lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if annotation in (int, float, str):
        if annotation is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("expected an integer")
        return annotation(value)
    return value


def build_options(options_class: type, values: dict[str, Any], owner: str) -> Any:
    """Instantiate ``options_class`` from ``values``; unknown names and bad values raise ``OptionError``."""
    hints = typing.get_type_hints(options_class)
    fields = {f.name for f in dataclasses.fields(options_class)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise OptionError(
            f"{owner} has no option {', '.join(map(repr, unknown))}; valid options: {', '.join(sorted(fields))}"
        )
    converted = {}
    for name, value in values.items():
        try:
            converted[name] = _convert(name, value, hints[name])
        except (TypeError, ValueError, json.JSONDecodeError) as exc:
            raise OptionError(f"{owner} option {name!r}: bad value {value!r} ({exc})") from None
    return options_class(**converted)
