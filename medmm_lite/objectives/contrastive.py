"""Contrastive objectives: pull matching pairs together, push the rest of the batch apart.

All three are the same InfoNCE idea. For a batch of N pairs with L2-normalised
features u_i and v_i, logits_ij = s * <u_i, v_j>, and the loss is cross-entropy
with the matching index i as the target, in one or both directions:

    SimCLR (NT-Xent): two augmented views of each image; 2N-1 candidates per anchor.
    CLIP:             image->text and text->image, averaged; s is learned.
    ConVIRT:          the same, weighted lambda * image->text + (1 - lambda) * text->image.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

CLIP_INIT_TEMPERATURE = 0.07   # logit scale starts at 1/0.07
CLIP_MAX_LOGIT_SCALE = 100.0   # ... and is clamped at 100


def _check_pairs(a: torch.Tensor, b: torch.Tensor, names=("image_features", "text_features")) -> None:
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"{names[0]} and {names[1]} must be (batch, dim); got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)} must have the same shape: "
                         "row i of each is one matching pair")
    if a.shape[0] < 2:
        raise ValueError("a contrastive loss needs at least 2 pairs in the batch (the others are the negatives)")


def similarity_logits(image_features, text_features, logit_scale):
    """(N, N) scaled cosine similarities: row i = image i against every text."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    return logit_scale * image_features @ text_features.t()


def clip_loss(image_features, text_features, logit_scale, image_to_text_weight: float = 0.5):
    """CLIP's symmetric InfoNCE. Features are L2-normalised here; ``logit_scale`` multiplies
    the cosine similarities (CLIP learns it, starting at 1/0.07).

    ``image_to_text_weight`` = 0.5 is CLIP (the plain average of both directions);
    0.75 is ConVIRT's asymmetric weighting.
    """
    _check_pairs(image_features, text_features)
    if not 0.0 <= image_to_text_weight <= 1.0:
        raise ValueError(f"image_to_text_weight must be in [0, 1], got {image_to_text_weight}")
    logits = similarity_logits(image_features, text_features, logit_scale)
    targets = torch.arange(logits.shape[0], device=logits.device)
    image_to_text = F.cross_entropy(logits, targets)
    text_to_image = F.cross_entropy(logits.t(), targets)
    return image_to_text_weight * image_to_text + (1 - image_to_text_weight) * text_to_image


def convirt_loss(image_features, text_features, temperature: float = 0.1, image_to_text_weight: float = 0.75):
    """ConVIRT (Zhang et al. 2020): fixed temperature 0.1, image->text weighted 0.75."""
    return clip_loss(image_features, text_features, 1.0 / temperature, image_to_text_weight)


def nt_xent_loss(view_a, view_b, temperature: float = 0.1):
    """SimCLR's NT-Xent. Each of the 2N views has one positive (its twin) and 2N-2 negatives;
    a view is never compared with itself."""
    _check_pairs(view_a, view_b, names=("view_a", "view_b"))
    n = view_a.shape[0]
    z = F.normalize(torch.cat([view_a, view_b]), dim=-1)
    logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


class LogitScale(nn.Module):
    """CLIP's learnable temperature, stored as log(1/T) and clamped at 100 when read."""

    def __init__(self, init_temperature: float = CLIP_INIT_TEMPERATURE, max_scale: float = CLIP_MAX_LOGIT_SCALE,
                 learnable: bool = True):
        super().__init__()
        if init_temperature <= 0:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature}")
        value = torch.tensor(math.log(1.0 / init_temperature))
        self.log_scale = nn.Parameter(value, requires_grad=learnable)
        self.max_log_scale = math.log(max_scale)

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(max=self.max_log_scale).exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self().detach())
