"""Adapting a pretrained model to a task: linear probing and LoRA.

    from medmm_lite.adapt import apply_lora, merge_lora, linear_probe, extract_features

* :func:`extract_features` + :func:`linear_probe`: a frozen encoder, a trained linear head.
* :func:`apply_lora` / :func:`merge_lora`: train a low-rank update of chosen linear layers.
* :func:`probe_curve` / :func:`supervised_curve`: the course's label-efficiency protocol (1/10/100%).
"""
from .lora import LoRALinear, apply_lora, lora_parameters, merge_lora
from .finetune import METHODS, FineTuned, finetune, finetune_steps, head_from_probe, prepare
from .probe import LinearProbe, extract_features, linear_probe
from .zero_shot import FINDING_PROMPTS, prompt_embeddings, report_prompt_embeddings, zero_shot_classify
from .protocol import (LABEL_FRACTIONS, Classifier, label_subset, pathology_auroc, predict, probe_curve,
                       supervised_baseline, supervised_budget, supervised_curve,
                       train_classifier)

__all__ = ["apply_lora", "merge_lora", "LoRALinear", "lora_parameters", "linear_probe", "LinearProbe",
           "extract_features", "LABEL_FRACTIONS", "Classifier", "label_subset", "pathology_auroc", "predict",
           "probe_curve", "FINDING_PROMPTS", "prompt_embeddings", "report_prompt_embeddings", "zero_shot_classify", "supervised_baseline", "supervised_budget", "supervised_curve", "train_classifier",
           "METHODS", "FineTuned", "finetune", "finetune_steps", "head_from_probe", "prepare"]
