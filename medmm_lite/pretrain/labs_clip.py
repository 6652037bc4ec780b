"""Images with labs: contrastive pretraining between the X-ray and the patient's lab values.

The review's "image + clinical data" studies pair the image with something other than a
report: lab values, vital signs, EHR fields. Here the second modality is the cohort's four
labs (BNP, WBC, temperature, SpO2), and the recipe is CLIP's with the labs in the text's place:

    image --ViT--> f_img --ProjectionHead--> u      labs (z-scores) --LabsEncoder--> f_lab --ProjectionHead--> v
    loss = clip_loss(u, v, logit_scale)   (symmetric InfoNCE over the batch; learned temperature)

Which labs belong to this film? Four noisy numbers cannot single out one study, so the loss
cannot be driven to zero; what the image tower *can* learn is whatever in the film predicts the
labs: a big heart and edema (BNP), a consolidation (WBC, temperature, SpO2). The findings the
labs do not inform (a fracture, a nodule, support devices) get no such pressure. Lesson 11
measures exactly that, per finding, against SimCLR at the same budget.

Choices: the labs are standardised with the training split's statistics (``fusion.standardise_labs``,
BNP on the log scale); the labs tower is a small MLP with a LayerNorm (``LabsEncoder``); the heads
are ``clip.ProjectionHead`` MLPs (BatchNorm, for the reason ``clip``'s docstring gives); light
augmentation of the images; random batches (the labs carry no site shortcut).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..backbones import image_encoder
from ..data.augment import light_augment
from ..data.tensors import TensorDictDataset
from ..fusion import standardise_labs
from ..hub import data_fingerprint, load_or_train, profile_key
from ..models.features import feature_dim
from ..models.vit import ImageFeatures
from ..objectives.contrastive import CLIP_INIT_TEMPERATURE, LogitScale, distributed_clip_loss
from ..train import fit
from .clip import ProjectionHead, recalibrate_batchnorm


class LabsEncoder(nn.Module):
    """Standardised labs (B, n_labs) -> features (B, dim): Linear, GELU, Linear, LayerNorm.

    Returns :class:`~medmm_lite.models.vit.ImageFeatures`-like output (``global_features``; the
    ``local_features`` are the input's labs, one "region" per lab) so it plugs in wherever a
    tower is expected.
    """

    def __init__(self, n_labs: int, dim: int, hidden: int | None = None):
        super().__init__()
        for name, value in (("n_labs", n_labs), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        hidden = hidden or dim
        self.n_labs, self.dim = n_labs, dim
        self.net = nn.Sequential(nn.Linear(n_labs, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.LayerNorm(dim))

    def forward(self, labs: torch.Tensor) -> ImageFeatures:
        if labs.ndim != 2 or labs.shape[1] != self.n_labs:
            raise ValueError(f"labs must be (B, {self.n_labs}) standardised values, got {tuple(labs.shape)}")
        return ImageFeatures(self.net(labs), labs[:, :, None])


class LabsCLIPModel(nn.Module):
    """An image tower and a labs tower with projection heads into one ``embed_dim`` space."""

    def __init__(self, image_encoder: nn.Module, labs_encoder: nn.Module, embed_dim: int,
                 init_temperature: float = CLIP_INIT_TEMPERATURE):
        super().__init__()
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
        self.image_encoder, self.labs_encoder, self.embed_dim = image_encoder, labs_encoder, embed_dim
        self.image_projection = ProjectionHead(feature_dim(image_encoder, "image"), embed_dim)
        self.labs_projection = ProjectionHead(feature_dim(labs_encoder, "labs"), embed_dim)
        self.logit_scale = LogitScale(init_temperature, learnable=True)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, embed_dim), not normalised."""
        return self.image_projection(self.image_encoder(images).global_features)

    def encode_labs(self, labs: torch.Tensor) -> torch.Tensor:
        """(B, n_labs) standardised labs -> (B, embed_dim), not normalised."""
        return self.labs_projection(self.labs_encoder(labs).global_features)

    def forward(self, images: torch.Tensor, labs: torch.Tensor):
        return self.encode_image(images), self.encode_labs(labs)


def labs_clip_step(model: LabsCLIPModel, batch, augment=light_augment, generator=None):
    """One step's loss for ``fit``: CLIP's symmetric InfoNCE between (augmented) images and their labs."""
    images = batch["image"]
    if augment is not None:
        images = augment(images, generator=generator if images.device.type == "cpu" else None)
    u, v = model(images, batch["labs"])
    scale = model.logit_scale()
    return distributed_clip_loss(u, v, scale), {"temperature": 1.0 / scale.detach()}


def build_labs_clip(P, n_labs: int = 4, *, seed: int = 0, embed_dim: int | None = None) -> LabsCLIPModel:
    """The course's image-labs CLIP model for profile ``P`` (standard ViT; a labs MLP of width ``P.dim``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LabsCLIPModel(image_encoder(P), LabsEncoder(n_labs, P.dim), embed_dim or P.dim)


def pretrain_labs_clip(P, data, *, seed: int = 0, steps: int | None = None, device=None, augment: bool = True,
                       lr: float | None = None, batch_size: int | None = None, progress: bool = True,
                       retrain: bool = False):
    """Train (or load from the cache) image <-> labs CLIP on the training split (no reports, no labels).

    The labs are standardised with the training split's statistics (``fusion.standardise_labs``);
    ``info["lab_stats"]`` holds them. ``steps``, ``lr``, ``batch_size`` default to the profile's.
    Returns ``(model, info)``, the model in eval mode; use ``model.image_encoder`` for probes.
    """
    steps = steps or P.steps
    lr = lr or P.lr
    batch_size = min(batch_size or P.batch_size, len(data.splits["train"]))
    device = device or P.device
    cohort = data.cohort
    train = torch.from_numpy(np.asarray(data.splits["train"], dtype=np.int64))
    labs, stats = standardise_labs(cohort.labs[train], cohort.lab_names)
    images = cohort.images[train]
    dataset = TensorDictDataset(image=images, labs=labs)

    def build():
        return build_labs_clip(P, labs.shape[1], seed=seed)

    def train_fn(model):
        generator = torch.Generator().manual_seed(seed + 1)

        def step(m, batch):
            return labs_clip_step(m, batch, augment=light_augment if augment else None, generator=generator)

        history = fit(model, step, dataset, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                      amp=P.amp, progress=progress, desc="image-labs CLIP", rng=generator)
        recalibrate_batchnorm(model, images, labs)
        return history

    key = {**profile_key(P), "data": data_fingerprint(data), "labs": stats, "seed": seed, "steps": steps,
           "lr": float(lr), "batch_size": batch_size, "augment": bool(augment)}
    model, info = load_or_train("labs_clip", train_fn, build_fn=build, key=key, device=device, retrain=retrain)
    info["lab_stats"] = stats
    return model.eval(), info


__all__ = ["LabsEncoder", "LabsCLIPModel", "labs_clip_step", "build_labs_clip", "pretrain_labs_clip"]
