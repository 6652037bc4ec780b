"""Contrastive objectives: pull matching pairs together, push the rest of the batch apart.

All three are the same InfoNCE idea. For a batch of N pairs with L2-normalised
features u_i and v_i, logits_ij = s * <u_i, v_j>, and the loss is cross-entropy
with the matching index i as the target, in one or both directions:

    SimCLR (NT-Xent): two augmented views of each image; 2N-1 candidates per anchor.
    CLIP:             image->text and text->image, averaged; s is learned.
    ConVIRT:          the same, weighted lambda * image->text + (1 - lambda) * text->image.

On several processes (DDP) each one holds a slice of the global batch, and a loss on the
slice alone would see only its own pairs as negatives: with 8 GPUs, 1/8 of them. The
``distributed_*`` versions gather every process's features (with gradients, as open_clip's
``gather_features(..., local_loss=True, gather_with_grad=True)``) and score the local rows
against all of them; averaged over processes (DDP averages gradients) that is exactly the
single-process loss on the global batch. On one process they are the plain losses.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributed import all_gather_with_grad, is_distributed, rank

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


def _check_scale(logit_scale) -> None:
    """``logit_scale`` (1 / temperature) must be > 0: a negative one ranks every mismatched pair
    above its match (the loss then trains the model backwards), 0 makes every pair alike."""
    if isinstance(logit_scale, torch.Tensor):
        if logit_scale.numel() != 1:
            raise ValueError(f"logit_scale must be one number (1 / temperature), got a tensor of shape "
                             f"{tuple(logit_scale.shape)}")
        bad = bool((logit_scale.detach() <= 0).any())
    elif isinstance(logit_scale, numbers.Real) and not isinstance(logit_scale, bool):
        bad = not logit_scale > 0 and not math.isnan(logit_scale)
    else:
        raise ValueError(f"logit_scale must be a number or a one-element tensor (1 / temperature), got "
                         f"{type(logit_scale).__name__}")
    if bad:
        value = float(logit_scale)
        raise ValueError(f"logit_scale must be > 0 (it is 1 / temperature; CLIP starts at 1/0.07 = 14.3), got "
                         f"{value:g}: a negative scale rewards mismatched pairs. A learned scale should be stored "
                         "as its log and exponentiated (LogitScale does)")


def _check_temperature(temperature) -> None:
    if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
            or not (temperature > 0 and math.isfinite(temperature))):
        raise ValueError(f"temperature must be a number > 0 (0.1 is typical), got {temperature!r}")


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
    _check_scale(logit_scale)
    if not 0.0 <= image_to_text_weight <= 1.0:
        raise ValueError(f"image_to_text_weight must be in [0, 1], got {image_to_text_weight}")
    logits = similarity_logits(image_features, text_features, logit_scale)
    targets = torch.arange(logits.shape[0], device=logits.device)
    image_to_text = F.cross_entropy(logits, targets)
    text_to_image = F.cross_entropy(logits.t(), targets)
    return image_to_text_weight * image_to_text + (1 - image_to_text_weight) * text_to_image


def convirt_loss(image_features, text_features, temperature: float = 0.1, image_to_text_weight: float = 0.75):
    """ConVIRT (Zhang et al. 2020): fixed temperature 0.1, image->text weighted 0.75."""
    _check_temperature(temperature)
    return clip_loss(image_features, text_features, 1.0 / temperature, image_to_text_weight)


def nt_xent_loss(view_a, view_b, temperature: float = 0.1):
    """SimCLR's NT-Xent. Each of the 2N views has one positive (its twin) and 2N-2 negatives;
    a view is never compared with itself."""
    _check_pairs(view_a, view_b, names=("view_a", "view_b"))
    _check_temperature(temperature)
    n = view_a.shape[0]
    z = F.normalize(torch.cat([view_a, view_b]), dim=-1)
    logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def gather_features(*features: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every process's rows of each tensor, concatenated in rank order, with gradients flowing
    back to the process that computed them (open_clip's ``gather_features`` with
    ``gather_with_grad=True``). On one process: the tensors themselves."""
    return tuple(all_gather_with_grad(f) for f in features)


def distributed_clip_loss(image_features, text_features, logit_scale, image_to_text_weight: float = 0.5):
    """:func:`clip_loss` over the global batch when training on several processes.

    This process's images are scored against every process's texts and its texts against
    every image; the targets are the local rows' positions in the global batch
    (``arange(local) + rank * local``). Every process must hold the same number of pairs.
    The value is this process's share; its mean over processes equals ``clip_loss`` of the
    gathered batch, and so do the DDP-averaged gradients. On one process it *is* ``clip_loss``.
    """
    if not is_distributed():
        return clip_loss(image_features, text_features, logit_scale, image_to_text_weight)
    _check_pairs(image_features, text_features)
    _check_scale(logit_scale)
    if not 0.0 <= image_to_text_weight <= 1.0:
        raise ValueError(f"image_to_text_weight must be in [0, 1], got {image_to_text_weight}")
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    all_images, all_texts = gather_features(image_features, text_features)
    local = image_features.shape[0]
    targets = torch.arange(local, device=image_features.device) + rank() * local
    image_to_text = F.cross_entropy(logit_scale * image_features @ all_texts.t(), targets)
    text_to_image = F.cross_entropy(logit_scale * text_features @ all_images.t(), targets)
    return image_to_text_weight * image_to_text + (1 - image_to_text_weight) * text_to_image


def distributed_nt_xent_loss(view_a, view_b, temperature: float = 0.1):
    """:func:`nt_xent_loss` over the global batch when training on several processes: this
    process's 2n views are anchors, every process's 2N views the candidates (a view is never
    compared with itself). Same averaging as :func:`distributed_clip_loss`; on one process it
    *is* ``nt_xent_loss``."""
    if not is_distributed():
        return nt_xent_loss(view_a, view_b, temperature)
    _check_pairs(view_a, view_b, names=("view_a", "view_b"))
    _check_temperature(temperature)
    a, b = F.normalize(view_a, dim=-1), F.normalize(view_b, dim=-1)
    all_a, all_b = gather_features(a, b)
    n, total = a.shape[0], all_a.shape[0]
    logits = torch.cat([a, b]) @ torch.cat([all_a, all_b]).t() / temperature   # (2n, 2N)
    rows = torch.arange(n, device=a.device) + rank() * n                         # global positions
    itself = torch.cat([rows, rows + total])
    logits = logits.index_put((torch.arange(2 * n, device=a.device), itself),
                              torch.tensor(float("-inf"), device=a.device, dtype=logits.dtype))
    targets = torch.cat([rows + total, rows])  # view a's twin is view b, and the other way round
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
