"""SimCLR: contrastive learning from images alone.

The image-only baseline of every image-text method (the review's "single
modality" arm). Each training image is augmented twice; the two views are
encoded, projected by a small MLP, and NT-Xent (``objectives.nt_xent_loss``)
asks each view to find its twin among the 2N - 1 other views of the batch.
Whatever survives the augmentations (anatomy, a big heart, an effusion) is
what the encoder learns to keep; what the augmentations change (window,
position, blur, noise) it learns to ignore.

Settings from Chen et al. 2020 ("A Simple Framework for Contrastive Learning of
Visual Representations"): a two-layer MLP projection head with a 128-d output
(Sec. 4.2; the encoder's features, before the head, are used downstream),
and temperature 0.1 (Sec. 5.1: the best of the temperatures they compare under
linear evaluation, and their ImageNet default; their CIFAR-10 runs use 0.5).

The views: SimCLR's recipe adapted to radiographs is ``data.augment.simclr_augment``
(crops down to 40% of the area, window jitter, blur, noise; no flips, no colour).
At the course's sizes (32-64 pixels, a few hundred steps) it is too strong: the
twin task stays at chance and the encoder's linear probe stays at the level of an
untrained one (cpu profile, 300 steps: AUROC 0.72 at 100% labels vs 0.77 with
milder views, 0.62 untrained; smoke: the probe does not move at all). So
``pretrain_simclr`` uses the milder ``light_augment`` views by default
(``augment="light"``); ``augment="simclr"`` gives the full-strength recipe.
SimCLR found that contrastive learning needs stronger augmentation than
supervised learning (Sec. 3), for its large models and long runs; at this scale
we measured the opposite.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import nn

from ..backbones import image_encoder
from ..data.augment import light_augment, simclr_augment
from ..data.samplers import SameGroupBatches
from ..data.tensors import TensorDictDataset
from ..hub import data_fingerprint, load_or_train, profile_key
from ..models.features import feature_dim
from ..objectives.contrastive import distributed_nt_xent_loss
from ..train import fit
from .clip import NEGATIVES, ProjectionHead, recalibrate_batchnorm

SIMCLR_TEMPERATURE = 0.1
SIMCLR_PROJ_DIM = 128
AUGMENTATIONS = {"light": light_augment, "simclr": simclr_augment}


class SimCLRModel(nn.Module):
    """An image encoder with SimCLR's projection head (Linear -> ReLU -> Linear to ``proj_dim``).

    ``forward(images)`` returns the projections z (B, proj_dim), not normalised (the loss
    normalises). Downstream tasks use ``model.encoder``'s global features instead.
    """

    def __init__(self, image_encoder: nn.Module, proj_dim: int = SIMCLR_PROJ_DIM):
        super().__init__()
        if isinstance(proj_dim, bool) or not isinstance(proj_dim, int) or proj_dim < 1:
            raise ValueError(f"proj_dim must be a positive int, got {proj_dim!r}")
        self.encoder = image_encoder
        self.projection = ProjectionHead(feature_dim(image_encoder, "image"), proj_dim, "mlp")
        self.proj_dim = proj_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection(self.encoder(images).global_features)


def simclr_step(model: SimCLRModel, batch, temperature: float = SIMCLR_TEMPERATURE, augment=light_augment,
                generator=None):
    """One step's NT-Xent loss for ``fit``: two augmented views of ``batch["image"]``.

    Both views go through the encoder in one call (a batch of 2N), which is faster than
    two calls and lets nothing about the batch differ between them.
    """
    if "image" not in batch:
        raise KeyError("simclr_step needs a batch with 'image'; build the dataset as TensorDictDataset(image=...)")
    if augment is None:
        raise ValueError("SimCLR needs an augmentation: without one the two views are identical and the loss "
                         "is solved without learning anything. Pass e.g. medmm_lite.data.augment.light_augment")
    images = batch["image"]
    g = generator if images.device.type == "cpu" else None
    views = torch.cat([augment(images, generator=g), augment(images, generator=g)])
    z = model(views)
    view_a, view_b = z.chunk(2)
    return distributed_nt_xent_loss(view_a, view_b, temperature)  # nt_xent_loss on one process


def build_simclr(P, *, seed: int = 0, proj_dim: int = SIMCLR_PROJ_DIM) -> SimCLRModel:
    """The course's SimCLR model for profile ``P`` (standard ViT), initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SimCLRModel(image_encoder(P), proj_dim)


def pretrain_simclr(P, data, *, seed: int = 0, temperature: float = SIMCLR_TEMPERATURE, steps: int | None = None,
                    device=None, augment: str = "light", negatives: str = "random", proj_dim: int = SIMCLR_PROJ_DIM,
                    lr: float | None = None, batch_size: int | None = None, progress: bool = True,
                    retrain: bool = False):
    """Train (or load from the cache) SimCLR on the training split's images (no reports, no labels).

    ``steps``, ``lr`` and ``batch_size`` default to the profile's. ``augment``: ``"light"`` views
    (default) or SimCLR's full-strength ``"simclr"`` recipe (see the module docstring).
    ``negatives="random"`` (default)
    is SimCLR as published; ``"same_site"`` draws each batch from one hospital, as
    ``clip.pretrain_clip`` does. (With the full-strength views it did not help SimCLR: in a
    300-step cpu-profile run the linear probe at 100% labels gave 0.72 with random batches and
    0.69 with same-site ones.)
    Returns ``(model, info)`` with the model in eval mode on ``device``; use ``model.encoder``
    for probes.
    """
    if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature > 0):
        raise ValueError(f"temperature must be a positive number (SimCLR: 0.1), got {temperature!r}")
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {tuple(AUGMENTATIONS)}, got {augment!r}")
    steps = steps or P.steps
    lr = lr or P.lr
    batch_size = min(batch_size or P.batch_size, len(data.splits["train"]))
    device = device or P.device
    train = torch.from_numpy(np.asarray(data.splits["train"], dtype=np.int64))
    if negatives == "same_site":
        dataset = SameGroupBatches(np.asarray(data.cohort.site)[train.numpy()], image=data.cohort.images[train])
    else:
        dataset = TensorDictDataset(image=data.cohort.images[train])

    def build():
        return build_simclr(P, seed=seed, proj_dim=proj_dim)

    def train_fn(model):
        generator = torch.Generator().manual_seed(seed + 1)
        step = partial(simclr_step, temperature=temperature, augment=AUGMENTATIONS[augment], generator=generator)
        history = fit(model, step, dataset, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                      amp=P.amp, progress=progress, desc=f"SimCLR T={temperature}", rng=generator)
        # the head's BatchNorm statistics for the final weights (see clip.recalibrate_batchnorm)
        recalibrate_batchnorm(model, data.cohort.images[train])
        return history

    key = {**profile_key(P), "data": data_fingerprint(data), "seed": seed, "temperature": float(temperature),
           "steps": steps, "lr": float(lr), "batch_size": batch_size, "proj_dim": proj_dim, "negatives": negatives,
           "augment": augment}
    model, info = load_or_train("simclr", train_fn, build_fn=build, key=key, device=device, retrain=retrain)
    return model.eval(), info


__all__ = ["SimCLRModel", "simclr_step", "build_simclr", "pretrain_simclr", "SIMCLR_TEMPERATURE", "SIMCLR_PROJ_DIM",
           "AUGMENTATIONS"]
