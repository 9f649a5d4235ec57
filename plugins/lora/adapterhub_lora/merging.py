"""LoRA adapters merged into one (``adapterhub merge``, ``continual merge``): the method's ``MethodSpec.merge``.

The core loads the inputs onto one peft model and calls ``combine``, which is peft's ``add_weighted_adapter`` with
all of its combinations. What peft gets wrong is repaired or refused here, before anything is pushed:

* rsLoRA: the merged config copies the first input's ``use_rslora`` while peft has already multiplied every
  input's own scaling into the merged weights and set ``lora_alpha = r``; the merged adapter must scale by 1, so
  its config is written with ``use_rslora = false``.
* DoRA: the inputs' magnitude vectors are not combined (the merged adapter gets freshly initialised ones): refused.
* Trained biases (``bias`` other than "none", ``lora_bias``): they live in the shared base layers: refused.

Kept free of torch and peft imports: the plugin's module imports this one for its ``MethodSpec``.
"""

from __future__ import annotations

from adapterhub.specs import MergeSpec

COMBINATIONS = ("linear", "svd", "cat", "ties", "ties_svd", "dare_linear", "dare_ties", "magnitude_prune")
"""peft's ``add_weighted_adapter`` combinations that the core's recipe records (all the core offers)."""


def refuse(peft_config: dict) -> str | None:
    """Why peft would merge this adapter wrongly (following its ref in the error), or None."""
    if peft_config.get("use_dora"):
        return (
            "is a DoRA adapter: peft's merge drops the inputs' magnitude vectors; "
            "merging DoRA adapters is not supported"
        )
    if peft_config.get("bias", "none") != "none" or peft_config.get("lora_bias"):
        return (
            f"trained biases (bias={peft_config.get('bias')!r}, lora_bias={peft_config.get('lora_bias')}), which live "
            "in the shared base layers and are lost by the merge; merge adapters trained with bias=none"
        )
    return None


def is_delta(key: str) -> bool:
    """A LoRA matrix (``lora_A``, ``lora_B``, ...): everything else a LoRA file holds is the task head."""
    return "lora_" in key


def combine(model, inputs: list[str], weights: list[float], into: str, combination: str,
            density: float | None) -> None:  # fmt: skip
    """peft's ``add_weighted_adapter``: its ``ValueError`` names why (ranks differ for linear/ties/dare, ...)."""
    model.base_model.add_weighted_adapter(inputs, weights, into, combination_type=combination, density=density)


def merged_config(config: dict) -> dict:
    """peft's merged tensors already carry every input's (rs)LoRA scaling and ``lora_alpha = r``: scale by 1."""
    return {**config, "use_rslora": False}


MERGE = MergeSpec(
    combinations=COMBINATIONS, is_delta=is_delta, combine=combine, refuse=refuse, merged_config=merged_config
)
