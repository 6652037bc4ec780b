"""Profiles turn one word (smoke / cpu / gpu) into every size a lesson needs.

A lesson never hard-codes a size: it asks its profile, so the same notebook proves
its code path in CI (smoke), gives readable results on a laptop (cpu) and the best
results on one GPU (gpu).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Profile:
    name: str
    n_studies: int        # cohort size
    image_size: int       # pixels per side
    patch_size: int       # ViT patch side
    dim: int              # model width (image and text)
    depth: int            # transformer blocks
    heads: int
    vocab_size: int       # tokenizer vocabulary
    max_text_len: int     # report tokens kept
    batch_size: int
    steps: int            # pretraining optimiser steps
    probe_steps: int      # steps for a linear probe / supervised head
    lr: float
    device: str           # "cpu" or "cuda"
    amp: bool             # mixed precision: on with CUDA (the gpu dry run turns it on on a CPU)
    vit_stem: str = "conv"  # how the ViT turns pixels into tokens: "conv" (a small conv stem) or "linear"
    vit_pool: str = "mean"  # the ViT's global feature: "mean" of the patch outputs or the "cls" output

    def with_(self, **changes) -> "Profile":
        """A copy with some sizes changed, e.g. ``p.with_(steps=100)``."""
        return replace(self, **changes)


_PROFILES = {
    # CI on 2 CPU cores: every lesson well under 90 s, yet enough steps to show a learning signal.
    "smoke": dict(n_studies=480, image_size=32, patch_size=8, dim=64, depth=2, heads=4,
                  vocab_size=500, max_text_len=80, batch_size=64, steps=300,
                  probe_steps=200, lr=1e-3),
    # A laptop or Colab CPU: each lesson under 10 minutes. A ViT step here costs ~0.1 s on 2 cores.
    "cpu": dict(n_studies=3000, image_size=64, patch_size=8, dim=96, depth=3, heads=4,
                vocab_size=600, max_text_len=96, batch_size=64, steps=600,
                probe_steps=300, lr=1e-3),
    # One GPU (a Colab T4 at least).
    "gpu": dict(n_studies=12000, image_size=128, patch_size=16, dim=256, depth=6, heads=8,
                vocab_size=1000, max_text_len=128, batch_size=256, steps=3000,
                probe_steps=500, lr=5e-4),
}
PROFILE_NAMES = tuple(_PROFILES) + ("auto",)


def resolve_profile_name(name: str = "auto") -> str:
    """``auto`` means: the ``MEDMM_PROFILE`` environment variable if set, else gpu with CUDA, else cpu."""
    if not isinstance(name, str) or name not in PROFILE_NAMES:
        raise ValueError(f"PROFILE must be one of {PROFILE_NAMES}, got {name!r}")
    if name != "auto":
        return name
    env = os.environ.get("MEDMM_PROFILE", "").strip()
    if env:
        if env not in _PROFILES:
            raise ValueError(f"MEDMM_PROFILE must be one of {tuple(_PROFILES)}, got {env!r}")
        return env
    return "gpu" if torch.cuda.is_available() else "cpu"


def profile(name: str = "auto") -> Profile:
    """The sizes for a profile name: ``smoke``, ``cpu``, ``gpu`` or ``auto``.

    ``MEDMM_PROFILE_OVERRIDES`` (tests only) changes fields of whichever profile is chosen, e.g.
    ``"n_studies=1200,amp=true"`` for the gpu profile's dry run on a CPU (``tools/gpu_dry_run.py``).
    """
    resolved = resolve_profile_name(name)
    device = "cuda" if torch.cuda.is_available() and resolved == "gpu" else "cpu"
    P = Profile(name=resolved, device=device, amp=device == "cuda", **_PROFILES[resolved])
    return P.with_(**parse_overrides(os.environ.get(OVERRIDES_VARIABLE, ""), P))


OVERRIDES_VARIABLE = "MEDMM_PROFILE_OVERRIDES"


def parse_overrides(text: str, P: Profile) -> dict:
    """``"n_studies=1200,amp=true"`` -> ``{"n_studies": 1200, "amp": True}``, typed like ``P``'s fields."""
    changes = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        field, sep, value = (s.strip() for s in item.partition("="))
        if not sep or field not in Profile.__dataclass_fields__ or field == "name":
            raise ValueError(f"{OVERRIDES_VARIABLE}: {item!r} is not FIELD=VALUE with a Profile field; "
                             f"the fields: {', '.join(f for f in Profile.__dataclass_fields__ if f != 'name')}")
        kind = type(getattr(P, field))
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                changes[field] = value.lower() in ("true", "1")
            else:
                changes[field] = kind(value)
        except ValueError:
            raise ValueError(f"{OVERRIDES_VARIABLE}: {field} must be a {kind.__name__}, got {value!r}") from None
    return changes
