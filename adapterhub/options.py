"""Turn user-given option values (CLI ``key=value`` strings or Python values) into an options dataclass,
and check each value against the limits its field declares.

The dataclass is the single source of truth: its field names are the valid options, its annotations give
the types and ``limited(...)`` fields give the valid ranges and choices. Every method plugin, the training
settings and the data spec get the same checks and messages from here, when the dataclass is built (as peft
configs check themselves in ``__post_init__``), so a bad value fails before any model is loaded; ``click_type``
turns the same limits into the type of a command-line flag, and ``setting_option`` makes the whole flag (type,
default, help) from a field, so a default or a help text is written once, on the dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import click

from adapterhub.errors import OptionError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_LIMITS = "adapterhub.limits"
_HELP = "adapterhub.help"


@dataclass(frozen=True)
class Limits:
    """Valid values of one option: a range (``min``/``max`` inclusive, ``above``/``below`` exclusive), a set of
    ``choices``, or, for a list, ``nonempty``. ``None`` (an option left unset) is always valid."""

    min: float | None = None
    above: float | None = None
    max: float | None = None
    below: float | None = None
    choices: tuple[str, ...] = ()
    nonempty: bool = False

    def allows(self, value: Any) -> bool:
        if value is None:
            return True
        if self.choices:
            return value in self.choices
        if self.nonempty:
            return len(value) > 0
        return math.isfinite(value) and not (
            (self.min is not None and value < self.min) or (self.above is not None and value <= self.above)
            or (self.max is not None and value > self.max) or (self.below is not None and value >= self.below)
        )  # fmt: skip

    def describe(self, name: str) -> str:
        """The valid values of option ``name`` in words, e.g. ``one of: none, all`` or ``0 <= dropout < 1``."""
        if self.choices:
            return f"one of: {', '.join(self.choices)}"
        if self.nonempty:
            return "at least one name"
        low = (">=", self.min) if self.min is not None else (">", self.above) if self.above is not None else None
        high = ("<=", self.max) if self.max is not None else ("<", self.below) if self.below is not None else None
        if low and high:
            return f"{low[1]:g} {low[0].replace('>', '<')} {name} {high[0]} {high[1]:g}"
        bound = low or high
        if bound is None:  # no range given: only NaN and infinities are refused
            return "any finite number"
        return f"{name} {bound[0]} {bound[1]:g}"


def limited(
    default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, help: str = "", **limits: Any
) -> Any:
    """A dataclass field with :class:`Limits`: ``r: int = limited(8, min=1)``, ``bias: str = limited("none", choices=(...))``;
    ``help`` is the help text of the command-line flag made from it (``setting_option``)."""
    metadata = {_LIMITS: Limits(**limits), **({_HELP: help} if help else {})}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def described(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, help: str) -> Any:
    """A dataclass field without limits whose command-line flag has ``help``: ``text_column: str = described("text", help=...)``."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_HELP: help})


class CheckedOptions:
    """Base of an options dataclass whose ``limited`` fields are checked when it is built.

    A subclass with rules between fields (e.g. AdaLoRA's ``target_r <= init_r``) overrides ``__post_init__``,
    calls ``super().__post_init__()`` first, and raises ``OptionError`` naming the options.
    """

    def __post_init__(self) -> None:
        for f in dataclasses.fields(cast("DataclassInstance", self)):  # a subclass is the dataclass
            limits, value = f.metadata.get(_LIMITS), getattr(self, f.name)
            if limits is None:
                continue
            try:
                allowed = limits.allows(value)
            except TypeError:  # e.g. a string given from Python where a number belongs
                allowed = False
            if not allowed:
                raise OptionError(f"option {f.name!r}: bad value {value!r}; valid values: {limits.describe(f.name)}")


class NumberRange(click.FloatRange):
    """``click.FloatRange`` that also refuses nan, which compares false with both bounds and so passes it."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number ({self})", param, ctx)
        return number


def _field(options_class: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(options_class) if f.name == name)


def click_type(options_class: type, name: str) -> click.ParamType:
    """The click type of a flag that sets field ``name``: its limits as an ``IntRange``/``FloatRange``/``Choice``,
    so the command line refuses a bad value (naming the flag) before anything runs; a field without limits gets
    the click type of its annotation (int, float, bool or text)."""
    annotation = typing.get_type_hints(options_class)[name]
    number = next((t for t in (int, float, bool) if t in (annotation, *typing.get_args(annotation))), None)
    limits = _field(options_class, name).metadata.get(_LIMITS)
    if limits is None or limits == Limits():
        plain: dict[type | None, click.ParamType] = {int: click.INT, float: click.FLOAT, bool: click.BOOL}
        return plain.get(number, click.STRING)
    if limits.choices:
        return click.Choice(limits.choices)
    low, high = (
        limits.min if limits.min is not None else limits.above,
        limits.max if limits.max is not None else limits.below,
    )
    kind = click.IntRange if number is int else NumberRange
    return kind(low, high, min_open=limits.above is not None, max_open=limits.below is not None)


def setting_option(options_class: type, name: str, *flags: str, override: bool = False, **click_kwargs: Any):
    """A click option for field ``name`` of ``options_class``: flag ``--<name>`` (or ``flags``), its type and limits
    (``click_type``), its default and its help, all read from the field.

    ``override=True`` makes an option whose default is None, for commands that fill in only what the user gave
    (``eval`` reuses what was recorded at training time); its help names the field's default in brackets.
    ``click_kwargs`` go to ``click.option`` as they are (``callback``, ``metavar``, a ``"--x/--no-x"`` flag).
    """
    field = _field(options_class, name)
    flags = flags or (f"--{name.replace('_', '-')}",)
    help_text = field.metadata.get(_HELP, "")
    has_default = field.default is not dataclasses.MISSING
    kwargs: dict[str, Any] = {"help": help_text}
    if "/" not in flags[0]:  # an on/off flag pair is a boolean flag, typed by click itself
        kwargs["type"] = click_type(options_class, name)
    if not has_default:
        kwargs["required"] = True
    elif override:
        kwargs["default"] = None
        if field.default is not None and field.default is not False:
            kwargs["help"] = f"{help_text.removesuffix('.')} [{field.default}]."
    else:
        kwargs.update(default=field.default, show_default=True)
    return click.option(*flags, name, **{**kwargs, **click_kwargs})


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
        near = [match for name in unknown for match in difflib.get_close_matches(name, fields, n=1)]
        guess = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
        raise OptionError(
            f"unknown option {', '.join(map(repr, unknown))} for {owner}{guess} (valid options: {', '.join(sorted(fields))})"
        )
    converted = {}
    for name, value in values.items():
        try:
            converted[name] = _convert(name, value, hints[name])
        except (TypeError, ValueError, json.JSONDecodeError) as exc:
            raise OptionError(f"{owner} option {name!r}: bad value {value!r} ({exc})") from None
    try:
        return options_class(**converted)
    except OptionError as exc:  # the dataclass's own checks (limits, rules between options)
        raise OptionError(f"{owner} {exc}") from None
