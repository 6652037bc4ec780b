"""Adapting a pretrained model to a task: linear probing and LoRA.

    from medmm_lite.adapt import apply_lora, merge_lora, linear_probe, extract_features

* :func:`extract_features` + :func:`linear_probe`: a frozen encoder, a trained linear head.
* :func:`apply_lora` / :func:`merge_lora`: train a low-rank update of chosen linear layers.
"""
from .lora import LoRALinear, apply_lora, lora_parameters, merge_lora
from .probe import LinearProbe, extract_features, linear_probe

__all__ = ["apply_lora", "merge_lora", "LoRALinear", "lora_parameters", "linear_probe", "LinearProbe",
           "extract_features"]
