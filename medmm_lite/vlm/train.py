"""The LLaVA recipe, cached: language model on reports -> stage 1 (projector) -> stage 2 (projector + LM).

Stage 1, *feature alignment*: the vision encoder and the language model are frozen; only
the projector learns, on image-report pairs in the plain template ``[BOS] <image> report
[EOS]``. The projector learns to say, in the LM's own embedding language, what the image shows.

Stage 2, *instruction tuning*: the projector and the language model learn (fully, or a
LoRA update of the LM's linear layers) on the instruction conversations, the loss on the
answer tokens only. The vision encoder stays frozen throughout, as in LLaVA, so its
features are computed once for every image and reused at every step.
"""
from __future__ import annotations

import numpy as np
import torch

from ..backbones import image_encoder
from ..data.samplers import length_grouped
from ..hub import data_fingerprint, load_or_train, profile_key
from ..pretrain.clip import pretrain_clip
from ..train import fit
from .instructions import (build_conversations, encode_conversations, encode_plain, generate_questions, pad_batch,
                           vlm_tokenizer)
from .language_model import build_language_model, lm_config, lm_sizes, pretrain_language_model
from .model import VisionLanguageModel, batched_image_features, vlm_step


def stage_steps(P) -> dict:
    """Default optimiser steps of each phase for profile ``P``: most go to instruction tuning.

    Stage 2 is where the model learns to read *where* from the image tokens (which side, how large,
    a box); presence comes early, those come late: in the cpu profile side accuracy keeps rising
    from 750 to 2,250 steps while presence stays level (docs/performance.md, "How long must a VLM
    be instruction-tuned to read where?"). So at least 4,500 steps outside the smoke profile, whose
    run only proves the code path and keeps CI fast.
    """
    stage2 = P.steps * 5 // 4 if P.name == "smoke" else max(P.steps * 5 // 4, 4500)
    return {"lm": max(1, P.steps // 3), "stage1": max(1, P.steps // 4), "stage2": max(1, stage2)}


def vlm_batch_size(P) -> int:
    return max(8, P.batch_size // 2)


def build_vlm(P, tokenizer, *, seed: int = 0, image_grid: int = 4, projector: str = "mlp", sizes=None,
              lora_rank: int | None = None, lora_alpha: float | None = None) -> VisionLanguageModel:
    """A fresh (untrained) VLM of the course's architecture for profile ``P``."""
    sizes = {**lm_sizes(P), **(sizes or {})}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vision = image_encoder(P)
        lm = build_language_model(lm_config(len(tokenizer), tokenizer=tokenizer, max_len=512, **sizes), seed=seed)
        model = VisionLanguageModel(vision, lm, tokenizer, image_grid=image_grid, projector=projector)
    if lora_rank:
        add_lora(model, lora_rank, lora_alpha)
    return model


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_lora(model: VisionLanguageModel, rank: int, alpha: float | None = None) -> VisionLanguageModel:
    """LoRA on the language model's attention and MLP projections (``adapt.apply_lora``); the
    projector stays fully trainable, the vision encoder frozen, the rest of the LM frozen."""
    from ..adapt import apply_lora

    apply_lora(model.lm, rank, float(alpha or 2 * rank), targets=list(LORA_TARGETS))
    model.projector.requires_grad_(True)
    return model


def stage1_tensors(tokenizer, reports, indices, max_len: int) -> dict:
    pairs = [encode_plain(tokenizer, reports[i], max_len=max_len) for i in indices]
    return {"input_ids": pad_batch([p[0] for p in pairs], tokenizer.pad_token_id),
            "labels": pad_batch([p[1] for p in pairs], -100),
            "attention_mask": pad_batch([[1] * len(p[0]) for p in pairs], 0)}


def pretrain_vlm(P, data, *, seed: int = 0, stage: int = 2, device=None, progress: bool = True,
                 lm_steps: int | None = None, stage1_steps: int | None = None, stage2_steps: int | None = None,
                 batch_size: int | None = None, lr: float | None = None, image_grid: int = 4, projector: str = "mlp",
                 lora_rank: int | None = None, lora_alpha: float | None = None, max_turns: int = 3,
                 retrain: bool = False, sizes: dict | None = None):
    """Train (or load from the cache) the course's VLM up to ``stage``: ``(model, info)``.

    Phases, each cached on its own through ``load_or_train``: lesson 02's CLIP (its ViT is the
    vision encoder), the small Llama on the reports (stage 0), stage 1 (projector only, plain
    image-report template), stage 2 (projector + LM on the instruction conversations; full
    fine-tuning, or LoRA of rank ``lora_rank`` merged into the weights afterwards).

    Returns the model in eval mode (``model.tokenizer`` holds its tokenizer) and ``info``
    (``load_or_train``'s dict of the last phase) with ``info["phases"]``: each phase's info.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 (projector only) or 2 (instruction tuned), got {stage!r}")
    device = device or P.device
    steps = stage_steps(P)
    steps = {"lm": lm_steps or steps["lm"], "stage1": stage1_steps or steps["stage1"],
             "stage2": stage2_steps or steps["stage2"]}
    lr = lr or P.lr
    train = np.asarray(data.splits["train"], dtype=np.int64)
    batch_size = min(batch_size or vlm_batch_size(P), len(train))
    sizes = {**lm_sizes(P), **(sizes or {})}

    tokenizer = vlm_tokenizer(data)
    clip_model, clip_info = pretrain_clip(P, data, seed=seed, device=device, progress=progress)
    lm, lm_info = pretrain_language_model(P, data, tokenizer, seed=seed, steps=steps["lm"], device=device,
                                          progress=progress, sizes=sizes)
    base_key = {**profile_key(P), "data": data_fingerprint(data), "vocab": len(tokenizer), "seed": seed,
                "sizes": sizes, "image_grid": image_grid, "projector": projector, "batch_size": batch_size,
                "lr": float(lr), "lm_steps": steps["lm"]}

    def build(lora=False):
        return build_vlm(P, tokenizer, seed=seed, image_grid=image_grid, projector=projector, sizes=sizes)

    # the frozen encoder's features of every training image, computed once
    probe = build()
    probe.vision.load_state_dict(clip_model.image_encoder.state_dict())
    probe.to(device)
    features = batched_image_features(probe, data.cohort.images[torch.from_numpy(train)])
    del probe
    row_of = {int(i): r for r, i in enumerate(train)}

    max_len = P.max_text_len + 32
    s1 = stage1_tensors(tokenizer, data.cohort.reports, train, max_len)
    s1["image_features"] = features

    def train_stage1(model):
        model.vision.load_state_dict(clip_model.image_encoder.state_dict())
        model.lm.load_state_dict(lm.state_dict())
        model.set_feature_stats(features)
        model.lm.requires_grad_(False)
        return fit(model, vlm_step, length_grouped(s1), steps=steps["stage1"], batch_size=batch_size,
                   lr=lr, seed=seed, device=device, amp=P.amp, progress=progress, desc="stage 1: projector",
                   params=list(model.projector.parameters()))

    key1 = {**base_key, "stage1_steps": steps["stage1"]}
    model1, info1 = load_or_train("vlm_stage1", train_stage1, build_fn=build, key=key1, device=device,
                                  retrain=retrain)
    phases = {"clip": clip_info, "lm": lm_info, "stage1": info1}
    if stage == 1:
        model1.requires_grad_(False)
        return model1.eval(), {**info1, "phases": phases, "tokenizer": tokenizer}

    questions = generate_questions(data.cohort, train, seed=seed)
    conversations = build_conversations(questions, max_turns=max_turns, seed=seed)
    s2 = encode_conversations(tokenizer, conversations, max_len=max_len)
    s2["image_features"] = features[torch.tensor([row_of[int(i)] for i in s2.pop("image")])]

    def train_stage2(model):
        from ..adapt import merge_lora

        model.load_state_dict(model1.state_dict())
        model.lm.requires_grad_(True)
        model.projector.requires_grad_(True)
        if lora_rank:
            add_lora(model, lora_rank, lora_alpha)
        trainable = model.trainable_parameters()
        history = fit(model, vlm_step, length_grouped(s2), steps=steps["stage2"], batch_size=batch_size,
                      lr=lr, seed=seed, device=device, amp=P.amp, progress=progress,
                      desc=f"stage 2: {'LoRA' if lora_rank else 'projector + LM'}",
                      params=[p for p in model.parameters() if p.requires_grad])
        if lora_rank:
            merge_lora(model.lm)
        return {"history": history, "trainable_parameters": trainable, "conversations": len(conversations)}

    key2 = {**key1, "stage2_steps": steps["stage2"], "lora_rank": lora_rank, "lora_alpha": lora_alpha,
            "max_turns": max_turns}
    model2, info2 = load_or_train("vlm_stage2", train_stage2, build_fn=build, key=key2, device=device,
                                  retrain=retrain)
    model2.requires_grad_(False)
    phases["stage2"] = info2
    return model2.eval(), {**info2, "phases": phases, "tokenizer": tokenizer}


__all__ = ["pretrain_vlm", "build_vlm", "add_lora", "stage_steps", "length_grouped", "vlm_batch_size", "stage1_tensors",
           "LORA_TARGETS"]
