"""The peft tuner of bottleneck adapters: finds the target output projections and wraps each in a layer."""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from .config import BottleneckConfig
from .layer import BottleneckLayer


class BottleneckModel(BaseTuner):
    """Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021) as a peft tuner."""

    prefix: str = "bottleneck_"
    tuner_layer_cls = BottleneckLayer
    target_module_mapping: dict = {}  # adapterhub always passes target_modules (per variant and architecture)

    def _create_and_replace(
        self,
        peft_config: BottleneckConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs,
    ) -> None:
        if isinstance(target, BottleneckLayer):
            target.update_layer(adapter_name, peft_config)
            return
        linear = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(linear, nn.Linear):
            raise ValueError(
                f"bottleneck adapters follow linear output projections; {current_key} is a {type(linear).__name__}"
            )
        new_module = BottleneckLayer(target, adapter_name, peft_config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)
