"""adapterhub method plugin: bottleneck adapters (Houlsby and Pfeiffer) as a peft tuner.

PEFT has no bottleneck adapters, so this package adds one (``config``, ``layer``, ``model``) and registers
it with ``peft.register_peft_method``: adapters save as safetensors through peft and load with
``peft.PeftModel.from_pretrained`` once this package is imported. One method, ``bottleneck``, with a
``variant`` option rather than two methods: both variants are the same tuner and peft type and differ only
in where adapters go, so a PEFT directory imports to exactly one method.

* ``houlsby``: an adapter after the attention output projection and after the feed-forward output.
* ``pfeiffer``: an adapter after the feed-forward output only (half the parameters, similar accuracy).

Every ``adapterhub --help`` imports this module (to look for plugin commands), so it does not import peft
(seconds, with torch and transformers): it registers the tuner right away when peft is already imported, and
otherwise as soon as peft is (``_RegisterWhenPeftIsImported``).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from dataclasses import dataclass, field

import adapterhub
from adapterhub.errors import OptionError
from adapterhub.options import CheckedOptions, limited
from adapterhub.specs import MethodSpec

PEFT_TYPE = "BOTTLENECK"
NON_LINEARITIES = ("relu", "gelu", "silu", "tanh")


def register() -> None:
    """Register the bottleneck tuner with peft (once per process; imports peft)."""
    from .registration import register as register_with_peft

    register_with_peft()


class _RegisterWhenPeftIsImported(importlib.abc.MetaPathFinder):
    """Finds ``peft`` like the other finders do and calls ``register()`` once peft's own import has run.

    Python has no post-import hook; this finder, first on ``sys.meta_path`` until peft is found, is the standard
    library's way to get one. It leaves peft's loader and module untouched: it only wraps ``exec_module``.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "peft":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRegister(spec.loader)
        return spec


class _ThenRegister(importlib.abc.Loader):
    """peft's own loader, followed by ``register()``; anything else is asked of peft's loader."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        register()

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


if "peft" in sys.modules:
    register()
elif not any(isinstance(finder, _RegisterWhenPeftIsImported) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenPeftIsImported())

VARIANTS = ("houlsby", "pfeiffer")
_ENCODERS = ("bert", "roberta", "xlm-roberta", "electra")
_DECODERS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo")
ATTENTION_OUTPUT = {
    **{t: r"attention\.output\.dense" for t in _ENCODERS},
    "distilbert": r"attention\.out_lin",
    **{t: r"self_attn\.o_proj" for t in _DECODERS},
}
"""Per model type: regex of the attention output projection (a Houlsby adapter follows it)."""
FFN_OUTPUT = {
    **{t: r"layer\.\d+\.output\.dense" for t in _ENCODERS},
    "distilbert": r"ffn\.lin2",
    **{t: r"mlp\.down_proj" for t in _DECODERS},
}
"""Per model type: regex of the feed-forward output projection (both variants put an adapter after it)."""


@dataclass
class BottleneckOptions(CheckedOptions):
    """Bottleneck adapter options.

    ``variant``: "houlsby" (after attention and feed-forward) or "pfeiffer" (after feed-forward only).
    ``reduction_factor``: hidden width / bottleneck width. ``target_modules``: regexes of output projections
    to follow instead of the variant's defaults (for architectures not in the built-in table).
    """

    variant: str = limited("houlsby", choices=VARIANTS)
    reduction_factor: int = limited(16, min=1)
    non_linearity: str = limited("relu", choices=NON_LINEARITIES)
    init_std: float = limited(0.02, above=0)
    target_modules: list[str] = field(default_factory=list)


def target_pattern(variant: str, model_type: str) -> str:
    """One regex (matched by peft against full module names) for the output projections of ``variant``."""
    if model_type not in FFN_OUTPUT:
        raise OptionError(
            f"method 'bottleneck' has no default placement for model type {model_type!r} (known: "
            f"{', '.join(sorted(FFN_OUTPUT))}); pass -o target_modules=REGEX,... naming its output projections"
        )
    parts = [ATTENTION_OUTPUT[model_type], FFN_OUTPUT[model_type]] if variant == "houlsby" else [FFN_OUTPUT[model_type]]
    return rf".*\.(?:{'|'.join(parts)})"


def build_config(options: BottleneckOptions, base):
    from adapterhub.model_tasks import peft_task_type

    from .config import BottleneckConfig

    targets = options.target_modules
    pattern = (
        rf".*\.(?:{'|'.join(targets)})" if targets else target_pattern(options.variant, base.model.config.model_type)
    )
    return BottleneckConfig(
        task_type=peft_task_type(base.model_task),
        target_modules=pattern,
        reduction_factor=options.reduction_factor,
        non_linearity=options.non_linearity,
        init_std=options.init_std,
    )


@adapterhub.hookimpl
def adapterhub_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="bottleneck",
            description="Bottleneck adapters: Houlsby (after attention and FFN) or Pfeiffer (after FFN) variant",
            peft_type=PEFT_TYPE,
            options=BottleneckOptions,
            build_config=build_config,
            capabilities=frozenset({"quantized-base"}),
        )
    ]
