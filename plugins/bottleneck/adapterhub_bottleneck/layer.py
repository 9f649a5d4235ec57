"""The bottleneck adapter layer: wraps one linear output projection and adds the adapter to its output."""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .config import BottleneckConfig

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class BottleneckLayer(nn.Module, BaseTunerLayer):
    """``y = base(x); y + up(act(down(y)))`` for each active adapter, applied in order.

    Placed after an attention output projection (Houlsby) or the feed-forward down projection (both
    variants), the adapter sits before the block's residual add / layer norm, as in the papers.
    """

    adapter_layer_names = ("bottleneck_down", "bottleneck_up")
    other_param_names = ("bottleneck_act",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: BottleneckConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.bottleneck_down = nn.ModuleDict({})
        self.bottleneck_up = nn.ModuleDict({})
        self.bottleneck_act = nn.ModuleDict({})
        self._disable_adapters = False
        self.merged_adapters = []
        linear = self.get_base_layer()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: BottleneckConfig) -> None:
        width = self.out_features
        bottleneck = max(1, width // config.reduction_factor)
        down, up = nn.Linear(width, bottleneck), nn.Linear(bottleneck, width)
        nn.init.normal_(down.weight, std=config.init_std)
        nn.init.zeros_(down.bias)
        nn.init.zeros_(up.weight)  # a fresh adapter is the identity
        nn.init.zeros_(up.bias)
        self.bottleneck_down[adapter_name] = down
        self.bottleneck_up[adapter_name] = up
        self.bottleneck_act[adapter_name] = ACTIVATIONS[config.non_linearity]()
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError("bottleneck adapters are non-linear and cannot be merged into the base weights")

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)  # (batch, seq, width)
        if self.disable_adapters:
            return result
        for name in self.active_adapters:
            if name not in self.bottleneck_down:
                continue
            down, up, act = self.bottleneck_down[name], self.bottleneck_up[name], self.bottleneck_act[name]
            hidden = result.to(down.weight.dtype)
            result = result + up(act(down(hidden))).to(result.dtype)  # (batch, seq, width)
        return result

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()
