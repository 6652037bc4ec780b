"""Image-image contrastive pretraining: registered T1 and T2 MRI of the same brain as a pair.

The second "modality" need not be text. An MRI study holds several contrasts of the same
anatomy (``data.generate_mri_phantoms``: T1, T2, FLAIR, registered pixel for pixel). Each
contrast weights a different tissue property, so the *other* contrast is a view of the same
brain that no augmentation of the first can produce: a lesion that is a faint dark spot on T1
is bright on T2. Two recipes, same encoder, same steps and batch:

* **T1 <-> T2 contrastive** (``pretrain_t1t2``): a T1 tower and a T2 tower (two ViTs), CLIP's
  symmetric InfoNCE between the projections of the two contrasts of each brain; "which T2 is
  this T1's?" Downstream we keep only the T1 tower: at test time only T1 is acquired.
* **SimCLR on T1 alone** (``pretrain_t1_simclr``): the single-contrast baseline, two augmented
  views of the same T1 (``simclr.simclr_step``).

Both see light augmentation (``data.augment.light_augment``, drawn independently per view).

Downstream, with the encoder frozen: lesion detection (a linear probe on the global feature)
and lesion segmentation (``PatchSegHead``: a small per-patch MLP on the ViT's patch tokens that
predicts each patch's ``patch_size x patch_size`` pixels of lesion mask, trained with BCE + soft
Dice on a few labelled phantoms).
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from ..backbones import image_encoder
from ..data.augment import light_augment
from ..data.tensors import TensorDictDataset
from ..hub import load_or_train, profile_key
from ..models.features import feature_dim
from ..objectives.contrastive import CLIP_INIT_TEMPERATURE, LogitScale, distributed_clip_loss
from ..train import fit
from .clip import ProjectionHead, recalibrate_batchnorm
from .simclr import SIMCLR_TEMPERATURE, build_simclr, simclr_step

DENSE_TEMPERATURE = 0.1     # fixed, as SimCLR's
DENSE_POSITIONS = 16        # patches sampled per image for the dense loss


# --------------------------------------------------------------------------- T1 <-> T2 contrastive
class ContrastPairModel(nn.Module):
    """Two image towers (one per contrast) with projection heads into one ``embed_dim`` space."""

    def __init__(self, encoder_a: nn.Module, encoder_b: nn.Module, embed_dim: int,
                 init_temperature: float = CLIP_INIT_TEMPERATURE):
        super().__init__()
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
        self.encoder_a, self.encoder_b, self.embed_dim = encoder_a, encoder_b, embed_dim
        self.projection_a = ProjectionHead(feature_dim(encoder_a, "first"), embed_dim)
        self.projection_b = ProjectionHead(feature_dim(encoder_b, "second"), embed_dim)
        self.logit_scale = LogitScale(init_temperature, learnable=True)
        # per-token heads for the dense (patch-to-patch) loss; LayerNorm, not BatchNorm: tokens of
        # one image are not independent samples
        self.token_projection_a = nn.Sequential(nn.LayerNorm(encoder_a.dim), nn.Linear(encoder_a.dim, embed_dim))
        self.token_projection_b = nn.Sequential(nn.LayerNorm(encoder_b.dim), nn.Linear(encoder_b.dim, embed_dim))

    def forward(self, images_a: torch.Tensor, images_b: torch.Tensor, tokens: bool = False):
        """Global projections ``(u, v)`` (B, embed_dim); with ``tokens=True`` also the per-patch
        projections ``(U, V)`` (B, n_patches, embed_dim) of the two contrasts."""
        if images_a.shape != images_b.shape:
            raise ValueError(f"the two contrasts must be registered (same shape), got {tuple(images_a.shape)} "
                             f"and {tuple(images_b.shape)}")
        fa, fb = self.encoder_a(images_a), self.encoder_b(images_b)
        u, v = self.projection_a(fa.global_features), self.projection_b(fb.global_features)
        if not tokens:
            return u, v
        return u, v, self.token_projection_a(fa.local_features), self.token_projection_b(fb.local_features)


def dense_pair_loss(tokens_a: torch.Tensor, tokens_b: torch.Tensor, temperature: float = DENSE_TEMPERATURE,
                    n_positions: int | None = DENSE_POSITIONS, generator=None) -> torch.Tensor:
    """Patch-to-patch InfoNCE between registered images: the token of T1 patch p of brain i must
    find the token of T2 patch p of brain i among ``n_positions`` sampled patches of every brain
    in the batch (the other patches of its own brain are negatives too), in both directions.

    Registration gives this correspondence for free; no augmentation of one image can. A patch
    with a lesion is unlike every other patch on T2, so its T1 token must carry the lesion.
    """
    if tokens_a.shape != tokens_b.shape or tokens_a.ndim != 3:
        raise ValueError(f"tokens must be two (B, n_patches, D) tensors of one shape, got {tuple(tokens_a.shape)} "
                         f"and {tuple(tokens_b.shape)}")
    b, n, _ = tokens_a.shape
    if n_positions is not None and n_positions < n:
        idx = torch.rand(b, n, generator=generator).argsort(1)[:, :n_positions].to(tokens_a.device)
        take = idx[:, :, None].expand(-1, -1, tokens_a.shape[-1])
        tokens_a, tokens_b = tokens_a.gather(1, take), tokens_b.gather(1, take)
    return nt_xent_pairs(tokens_a.flatten(0, 1), tokens_b.flatten(0, 1), temperature)


def nt_xent_pairs(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE with fixed temperature: row i of ``a`` against every row of ``b``, and back."""
    a, b = nn.functional.normalize(a, dim=-1), nn.functional.normalize(b, dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target))


def contrast_pair_step(model: ContrastPairModel, batch, augment=light_augment, generator=None,
                       dense_weight: float = 0.0):
    """One step's loss for ``fit``: CLIP's symmetric InfoNCE between the two contrasts of each brain,
    plus ``dense_weight`` times :func:`dense_pair_loss` between their registered patches.

    The augmentation is drawn once per brain and applied to both contrasts (the two are stacked as
    channels), so they stay registered.
    """
    a, b = batch["a"], batch["b"]
    g = generator if a.device.type == "cpu" else None
    if augment is not None:
        a, b = augment(torch.cat([a, b], 1), generator=g).chunk(2, dim=1)
    scale = model.logit_scale()
    logs = {"temperature": 1.0 / scale.detach()}
    if dense_weight:
        u, v, ta, tb = model(a, b, tokens=True)
        global_loss = distributed_clip_loss(u, v, scale)
        dense = dense_pair_loss(ta, tb, generator=g)
        logs.update(global_loss=global_loss.detach(), dense_loss=dense.detach())
        return global_loss + dense_weight * dense, logs
    u, v = model(a, b)
    return distributed_clip_loss(u, v, scale), logs


def build_contrast_pair(P, *, seed: int = 0, embed_dim: int | None = None) -> ContrastPairModel:
    """Two standard ViTs for profile ``P`` (one per contrast), initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ContrastPairModel(image_encoder(P), image_encoder(P), embed_dim or P.dim)


def mri_fingerprint(images: torch.Tensor) -> str:
    """A short hash of the training images (a strided sample of the pixels), for cache keys."""
    flat = images.flatten()
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(flat[:: max(1, flat.numel() // 200_000)].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _sizes(P, images, steps, lr, batch_size):
    if images.ndim != 4 or images.shape[-1] != P.image_size:
        raise ValueError(f"images must be (N, 1, {P.image_size}, {P.image_size}) for profile {P.name!r}, "
                         f"got {tuple(images.shape)}")
    return steps or P.steps, lr or P.lr, min(batch_size or P.batch_size, len(images))


def pretrain_t1t2(P, t1: torch.Tensor, t2: torch.Tensor, *, seed: int = 0, steps: int | None = None, device=None,
                  augment: bool = True, dense_weight: float = 1.0, lr: float | None = None,
                  batch_size: int | None = None, progress: bool = True, retrain: bool = False):
    """Train (or load from the cache) T1 <-> T2 contrastive pretraining on registered pairs.

    ``t1``, ``t2``: (N, 1, H, W) training slices of the same brains (no labels, no masks).
    ``dense_weight``: weight of the patch-to-patch loss (:func:`dense_pair_loss`) beside the global
    one; 0 gives the global (CLIP-style) loss alone.
    Returns ``(model, info)``; ``model.encoder_a`` is the T1 encoder to use downstream.
    """
    if t1.shape != t2.shape:
        raise ValueError(f"t1 and t2 must be registered pairs of one shape, got {tuple(t1.shape)}, {tuple(t2.shape)}")
    steps, lr, batch_size = _sizes(P, t1, steps, lr, batch_size)
    device = device or P.device
    dataset = TensorDictDataset(a=t1, b=t2)

    def train_fn(model):
        generator = torch.Generator().manual_seed(seed + 1)

        def step(m, batch):
            return contrast_pair_step(m, batch, augment=light_augment if augment else None, generator=generator,
                                      dense_weight=dense_weight)

        history = fit(model, step, dataset, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                      amp=P.amp, progress=progress, desc="T1<->T2 contrastive", rng=generator)
        recalibrate_batchnorm(model, t1, t2)
        return history

    key = {**profile_key(P), "data": mri_fingerprint(torch.cat([t1, t2], 1)), "seed": seed, "steps": steps,
           "lr": float(lr), "batch_size": batch_size, "augment": bool(augment), "dense_weight": float(dense_weight)}
    model, info = load_or_train("mri_t1t2", train_fn, build_fn=lambda: build_contrast_pair(P, seed=seed), key=key,
                                device=device, retrain=retrain)
    return model.eval(), info


def pretrain_t1_simclr(P, t1: torch.Tensor, *, seed: int = 0, steps: int | None = None, device=None,
                       temperature: float = SIMCLR_TEMPERATURE, lr: float | None = None,
                       batch_size: int | None = None, progress: bool = True, retrain: bool = False):
    """The single-contrast baseline: SimCLR (``simclr.simclr_step``, light views) on T1 slices alone.

    Returns ``(model, info)``; ``model.encoder`` is the T1 encoder.
    """
    steps, lr, batch_size = _sizes(P, t1, steps, lr, batch_size)
    device = device or P.device
    dataset = TensorDictDataset(image=t1)

    def train_fn(model):
        generator = torch.Generator().manual_seed(seed + 1)

        def step(m, batch):
            return simclr_step(m, batch, temperature=temperature, augment=light_augment, generator=generator)

        history = fit(model, step, dataset, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                      amp=P.amp, progress=progress, desc="SimCLR on T1", rng=generator)
        recalibrate_batchnorm(model, t1)
        return history

    key = {**profile_key(P), "data": mri_fingerprint(t1), "seed": seed, "steps": steps, "lr": float(lr),
           "batch_size": batch_size, "temperature": float(temperature)}
    model, info = load_or_train("mri_t1_simclr", train_fn, build_fn=lambda: build_simclr(P, seed=seed), key=key,
                                device=device, retrain=retrain)
    return model.eval(), info


# --------------------------------------------------------------------------- segmentation from patch tokens
@torch.no_grad()
def extract_patch_features(encoder: nn.Module, images: torch.Tensor, batch_size: int = 256, device=None):
    """A frozen encoder's ``(global (N, D), local (N, n_patches, D))`` features, on the CPU."""
    device = device or next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval().to(device)
    glob, loc = [], []
    try:
        for i in range(0, len(images), batch_size):
            out = encoder(images[i:i + batch_size].to(device))
            glob.append(out.global_features.float().cpu())
            loc.append(out.local_features.float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(glob), torch.cat(loc)


def unpatchify_masks(patch_logits: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(B, h*w, p*p) per-patch pixel values -> (B, 1, h*p, w*p) images (row-major patches)."""
    h, w = grid
    b, n, pp = patch_logits.shape
    if n != h * w or pp != patch_size * patch_size:
        raise ValueError(f"expected (B, {h * w}, {patch_size ** 2}), got {tuple(patch_logits.shape)}")
    x = patch_logits.reshape(b, h, w, patch_size, patch_size).permute(0, 1, 3, 2, 4)
    return x.reshape(b, 1, h * patch_size, w * patch_size)


class PatchSegHead(nn.Module):
    """Frozen patch tokens (B, h*w, D) -> lesion logits (B, 1, H, W).

    Each patch token goes through the same small MLP (LayerNorm, Linear, GELU, Linear) to
    ``patch_size**2`` logits: the lesion mask of the pixels that patch covers (SETR's "naive"
    decoder at its smallest). It sees nothing but the encoder's tokens, so its Dice measures what
    the frozen features say about where lesions are.
    """

    def __init__(self, dim: int, grid: tuple[int, int], patch_size: int, hidden: int = 64):
        super().__init__()
        self.grid, self.patch_size = tuple(grid), patch_size
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, patch_size * patch_size))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return unpatchify_masks(self.net(tokens), self.grid, self.patch_size)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of sigmoid(logits) against the 0/1 target, over each image; averaged."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def train_seg_head(tokens: torch.Tensor, masks: torch.Tensor, grid, patch_size: int, *, steps: int = 300,
                   batch_size: int = 64, lr: float = 1e-2, hidden: int = 64, pos_weight: float = 30.0, seed: int = 0,
                   device=None, progress: bool = True) -> PatchSegHead:
    """Train a :class:`PatchSegHead` on frozen tokens (N, h*w, D) and masks (N, 1, H, W) with BCE + soft Dice.

    Lesion pixels are rare (under 1% of a slice), so the BCE weighs them ``pos_weight`` times a
    background pixel; without it the head learns to predict "no lesion" everywhere (Dice 0).
    """
    if len(tokens) != len(masks):
        raise ValueError(f"tokens and masks must have the same rows, got {len(tokens)} and {len(masks)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = PatchSegHead(tokens.shape[-1], grid, patch_size, hidden)

    def loss_fn(m, batch):
        logits = m(batch["tokens"])
        weight = torch.tensor(float(pos_weight), device=logits.device)
        bce = nn.functional.binary_cross_entropy_with_logits(logits, batch["mask"], pos_weight=weight)
        dice = soft_dice_loss(logits, batch["mask"])
        return bce + dice, {"bce": bce.detach(), "dice_loss": dice.detach()}

    fit(head, loss_fn, TensorDictDataset(tokens=tokens, mask=masks), steps=steps,
        batch_size=min(batch_size, len(tokens)), lr=lr, weight_decay=1e-4, seed=seed, device=device,
        progress=progress, desc="segmentation head")
    return head.eval()


@torch.no_grad()
def lesion_probabilities(head: PatchSegHead, tokens: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Per-pixel lesion probabilities (N, 1, H, W) on the CPU."""
    head.eval()
    device = next(head.parameters()).device
    out = [torch.sigmoid(head(tokens[i:i + batch_size].to(device))).cpu() for i in range(0, len(tokens), batch_size)]
    return torch.cat(out)


def predict_masks(head: PatchSegHead, tokens: torch.Tensor, threshold: float = 0.5, batch_size: int = 512):
    """Binary masks (N, 1, H, W) on the CPU: lesion probability > threshold."""
    return (lesion_probabilities(head, tokens, batch_size) > threshold).float()


__all__ = ["ContrastPairModel", "contrast_pair_step", "dense_pair_loss", "nt_xent_pairs", "DENSE_TEMPERATURE",
           "DENSE_POSITIONS", "build_contrast_pair", "mri_fingerprint", "pretrain_t1t2",
           "pretrain_t1_simclr", "extract_patch_features", "unpatchify_masks", "PatchSegHead", "soft_dice_loss",
           "train_seg_head", "lesion_probabilities", "predict_masks"]
