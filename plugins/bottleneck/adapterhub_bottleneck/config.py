"""The peft config of bottleneck adapters (saved as ``adapter_config.json`` with ``peft_type: BOTTLENECK``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft.config import PeftConfig
from peft.utils import PeftType

from . import NON_LINEARITIES, PEFT_TYPE


@dataclass
class BottleneckConfig(PeftConfig):
    """Bottleneck adapters after the output projections named by ``target_modules``.

    Each adapter maps the projection's output ``h`` (width ``d``) to ``h + up(act(down(h)))`` with
    ``down: d -> d // reduction_factor`` and ``up`` back to ``d``; ``up`` starts at zero so a fresh adapter
    is the identity (the near-identity initialisation of Houlsby et al.), ``down`` at N(0, init_std).
    """

    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Output projections (module names or one regex) that an adapter follows."}
    )
    reduction_factor: int = field(default=16, metadata={"help": "Hidden width divided by the bottleneck width."})
    non_linearity: str = field(default="relu", metadata={"help": f"One of {', '.join(NON_LINEARITIES)}."})
    init_std: float = field(default=0.02, metadata={"help": "Std of the down-projection's initial weights."})
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained and saved in full (e.g. a classification head)."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType(PEFT_TYPE)  # a member added by ``register`` before any config is built
        if self.reduction_factor < 1:
            raise ValueError(f"reduction_factor must be at least 1, got {self.reduction_factor}")
        if self.non_linearity not in NON_LINEARITIES:
            raise ValueError(f"non_linearity must be one of {', '.join(NON_LINEARITIES)}, got {self.non_linearity!r}")
