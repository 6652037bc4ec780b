"""The pretraining objectives the command line can run, one entry each.

An entry names a lesson's recipe (``pretrain_clip``, ``pretrain_mae``...) by its import path;
the recipe is imported only when it runs. Every recipe follows the same convention, which
is all the command line relies on:

    recipe(P, data, *, seed=..., steps=None, device=None, progress=True, [dataset=...], **options)
        -> (model, info)          # through medmm_lite.hub.load_or_train

A new objective (captioning with lesson 05, CoCa with lesson 08) is one line in
``OBJECTIVES``; until then it is listed in ``PLANNED``, so asking for it says when it comes.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass


@dataclass(frozen=True)
class Objective:
    name: str
    recipe: str     # "module:function"
    lesson: str     # the lesson that teaches it
    summary: str

    def load(self):
        """The recipe function itself."""
        module, _, function = self.recipe.partition(":")
        return getattr(importlib.import_module(module), function)

    def options(self) -> list[str]:
        """The recipe's own keyword options (what a config's ``[objective]`` table may set)."""
        reserved = {"P", "data", "seed", "steps", "device", "progress", "dataset", "retrain"}
        # a function-valued option (an augmentation) cannot be written in a config file
        return [name for name, p in inspect.signature(self.load()).parameters.items()
                if name not in reserved and p.kind is inspect.Parameter.KEYWORD_ONLY and not callable(p.default)]


OBJECTIVES = {o.name: o for o in (
    Objective("clip", "medmm_lite.pretrain.clip:pretrain_clip", "02", "CLIP / ConVIRT: image-report contrastive"),
    Objective("simclr", "medmm_lite.pretrain.simclr:pretrain_simclr", "02", "SimCLR: contrastive, images only"),
    Objective("gloria", "medmm_lite.pretrain.gloria:pretrain_gloria", "03", "GLoRIA: local + global alignment"),
    Objective("mae", "medmm_lite.pretrain.mae:pretrain_mae", "04", "MAE: masked autoencoder, images only"),
    Objective("mlm", "medmm_lite.pretrain.m3ae:pretrain_mlm", "04", "masked language model, reports only"),
    Objective("m3ae", "medmm_lite.pretrain.m3ae:pretrain_m3ae", "04",
              "M3AE: masked image + text modelling, image-text matching"),
    Objective("caption", "medmm_lite.pretrain.caption:pretrain_caption", "05",
              "captioning: write the report from the image (encoder-decoder)"),
    Objective("coca", "medmm_lite.pretrain.coca:pretrain_coca", "08", "CoCa: contrastive + captioning"),
    Objective("labs_clip", "medmm_lite.pretrain.labs_clip:pretrain_labs_clip", "11", "image <-> labs contrastive (CLIP)"),
)}

# Objectives of lessons still to be written: name -> the lesson that will bring it.
PLANNED: dict[str, str] = {}


def get_objective(name: str) -> Objective:
    """The registered objective ``name``, or a ValueError that says what is available."""
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    available = ", ".join(OBJECTIVES)
    if name in PLANNED:
        raise ValueError(f"objective {name!r} is not available yet: it comes with {PLANNED[name]}. "
                         f"Available now: {available}")
    planned = f" (planned: {', '.join(PLANNED)})" if PLANNED else ""
    raise ValueError(f"unknown objective {name!r}; available: {available}{planned}")


__all__ = ["Objective", "OBJECTIVES", "PLANNED", "get_objective"]
