"""IA3 adapters merged into one (``adapterhub merge``): the method's ``MethodSpec.merge``.

peft's ``IA3Model.add_weighted_adapter`` has one combination, ``linear``: the merged vector of a module is the
weighted sum of the inputs' vectors (weights summing to 1: a weighted mean of the scalings). It starts every module
of the union of the inputs' targets from zero, although an IA3 vector that scales nothing is one, so a module only
some inputs target would be shrunk towards zero; and it takes the union of the feed-forward modules, so a module
one input scales on its output and another on its input would be summed as one kind. Both are refused, naming the
modules.

Kept free of torch and peft imports: the plugin's module imports this one for its ``MethodSpec``.
"""

from __future__ import annotations

from adapterhub.specs import MergeSpec

VECTOR_KEY = "ia3_l"


def is_delta(key: str) -> bool:
    """An IA3 vector; everything else an IA3 file holds is the task head."""
    return key.endswith(f".{VECTOR_KEY}")


def combine(model, inputs: list[str], weights: list[float], into: str, combination: str,
            density: float | None) -> None:  # fmt: skip
    """peft's ``add_weighted_adapter`` (``combination`` is ``linear``, the only one offered), for inputs that scale
    the same modules the same way."""
    first = model.peft_config[inputs[0]]
    for name in inputs[1:]:
        config = model.peft_config[name]
        for selection in ("target_modules", "feedforward_modules"):
            ours, theirs = _modules(getattr(first, selection)), _modules(getattr(config, selection))
            if ours != theirs:
                raise ValueError(
                    f"the inputs have different {selection} ({ours} and {theirs}), which peft's IA3 merge combines "
                    f"wrongly; merge IA3 adapters trained with the same target_modules and feedforward_modules"
                )
    model.base_model.add_weighted_adapter(inputs, weights, into)


def _modules(value) -> str | list[str] | None:
    """A config's module selection, comparable: a regex as is, names sorted."""
    return value if value is None or isinstance(value, str) else sorted(value)


MERGE = MergeSpec(combinations=("linear",), is_delta=is_delta, combine=combine)
