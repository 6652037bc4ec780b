"""MAE: a masked autoencoder for images (He et al. 2022, ``facebookresearch/mae``).

    images --patchify--> 64 patch tokens --drop 75%--> 16 tokens --ViT encoder--> latent
    latent --Linear--> decoder width, + a shared [mask] token for each removed patch,
           un-shuffled to patch order, + sin-cos positions --small transformer--> pixels per patch
    loss = MSE on the removed patches only (targets normalised per patch)

The encoder is the course's :class:`~medmm_lite.models.ViT` (with MAE's fixed sin-cos
positions); it never sees a mask token, so after pretraining it is used as it is,
on whole images, for linear probing and fine-tuning. The decoder is thrown away.
It is deliberately light (narrower and shallower than the encoder): reconstruction
is its job, so the encoder's features can stay more abstract.

``pretrain_mae(P, data, seed=...)`` trains one on a cohort's training images through
:func:`medmm_lite.hub.load_or_train`, so a later lesson gets the same model from the cache.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..backbones import image_encoder
from ..hub import data_fingerprint, load_or_train
from ..models import Block, ViT, patchify, sincos_pos_embed_2d, unpatchify
from ..objectives.masking import keep_count, mae_loss, random_masking, unshuffle
from ..profiles import Profile
from ..train import fit


def default_decoder_dim(dim: int) -> int:
    """Half the encoder's width (MAE: 512 for ViT-L's 1024), rounded to a multiple of 16, at least 32."""
    return max(32, (dim // 2) // 16 * 16)


class PatchDecoder(nn.Module):
    """MAE's light decoder: encoded visible tokens in, pixels of every patch out.

    ``forward(latent, ids_restore)``: ``latent`` (B, 1 + kept, encoder_dim) with a summary
    token first (the [CLS]); the kept tokens are projected to ``decoder_dim``, a shared
    learned mask token fills each removed patch, everything is put back in patch order,
    fixed sin-cos positions are added (the mask tokens differ only by where they sit),
    then a few transformer blocks and a linear layer predict p*p*C values per patch.
    Returns (B, N, p*p*C), the summary position dropped.
    """

    def __init__(self, encoder_dim: int, grid_size: tuple[int, int], patch_pixels: int, decoder_dim: int = 64,
                 depth: int = 2, heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        if decoder_dim % 4 or decoder_dim % heads:
            raise ValueError(f"decoder_dim={decoder_dim} must be divisible by 4 (sin-cos positions) and by "
                             f"the decoder's heads={heads}")
        self.embed = nn.Linear(encoder_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        # Fixed, like the encoder's: the decoder must know where each mask token sits.
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(*grid_size, decoder_dim, cls_token=True),
                                      requires_grad=False)
        self.blocks = nn.ModuleList([Block(decoder_dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.pred = nn.Linear(decoder_dim, patch_pixels)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """MAE's initialisation: xavier-uniform Linear weights, zero biases, unit LayerNorms,
        mask token ~ N(0, 0.02)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent, ids_restore):
        x = self.embed(latent)
        patches = unshuffle(x[:, 1:], self.mask_token, ids_restore)
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]   # drop the summary position


class MAE(nn.Module):
    """Masked autoencoder around a ViT encoder.

    Args:
        vit: the encoder (:class:`~medmm_lite.models.ViT`; MAE uses ``pos_embed="sincos"``).
        decoder_dim, decoder_depth, decoder_heads: the light decoder's width, blocks and heads.
        norm_pix_loss: predict per-patch normalised pixels (MAE's better-features setting).
        mlp_ratio: the decoder blocks' MLP width factor.

    ``forward(images, mask_ratio=0.75, generator=None)`` -> ``(loss, pred, mask)``:
    ``pred`` (B, N, p*p*C) is the decoder's output for every patch (in normalised units
    with ``norm_pix_loss``); ``mask`` (B, N) is 1 where the patch was removed.
    """

    def __init__(self, vit: ViT, decoder_dim: int = 64, decoder_depth: int = 2, decoder_heads: int = 4,
                 norm_pix_loss: bool = True, mlp_ratio: float = 4.0):
        super().__init__()
        if not isinstance(vit, ViT):
            raise TypeError(f"MAE needs a medmm_lite.models.ViT encoder (it drops patch tokens), got {type(vit).__name__}")
        self.encoder = vit
        self.norm_pix_loss = norm_pix_loss
        self.patch_size, self.in_chans = vit.patch_size, vit.in_chans
        self.decoder = PatchDecoder(vit.dim, vit.grid_size, vit.patch_size ** 2 * vit.in_chans, decoder_dim,
                                    decoder_depth, decoder_heads, mlp_ratio)

    def forward_encoder(self, images, mask_ratio: float, generator=None):
        """Embed, drop ``mask_ratio`` of the patches, encode the rest: ``(latent, mask, ids_restore)``
        with ``latent`` (B, 1 + kept, dim), the [CLS] token first."""
        self.encoder.check_input(images)
        # Draw the mask first and black out the hidden pixels before embedding: a conv stem's kept
        # tokens would otherwise see the borders of hidden patches (ConvMAE's masked convolution);
        # with a linear or patchwise stem the kept tokens are the same either way.
        B, N = images.shape[0], self.encoder.num_patches
        _, mask, ids_restore = random_masking(images.new_zeros(B, N, 1), mask_ratio, generator=generator)
        pixel_mask = unpatchify(mask[..., None].expand(-1, -1, self.patch_size ** 2 * self.in_chans),
                                self.patch_size, self.in_chans, self.encoder.grid_size)
        x = self.encoder.embed_patches(images * (1 - pixel_mask))
        kept = ids_restore.argsort(dim=1)[:, :keep_count(N, mask_ratio)]
        x = torch.gather(x, 1, kept[..., None].expand(-1, -1, x.shape[-1]))
        latent = self.encoder.forward_tokens(self.encoder.prepend_cls(x))
        return latent, mask, ids_restore

    def forward_decoder(self, latent, ids_restore):
        """Kept tokens + mask tokens, back in patch order -> predicted pixels (B, N, p*p*C)."""
        return self.decoder(latent, ids_restore)

    def forward(self, images, mask_ratio: float = 0.75, generator=None):
        latent, mask, ids_restore = self.forward_encoder(images, mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)
        target = patchify(images, self.patch_size)
        return mae_loss(pred, target, mask, self.norm_pix_loss), pred, mask


class Reconstruction(NamedTuple):
    """What :func:`reconstruct` returns, every field (B, C, H, W).

    ``mask``: 1 on removed pixels. ``prediction``: the decoder's output for every patch, in
    pixels. ``pasted``: the visible patches of the original with predictions in the holes
    (MAE's demo figure). ``error``: per-pixel squared error of ``pasted``.
    """

    images: torch.Tensor
    mask: torch.Tensor
    prediction: torch.Tensor
    pasted: torch.Tensor
    error: torch.Tensor


def patch_predictions_to_pixels(pred, images, patch_size: int, norm_pix_loss: bool):
    """Turn predicted patches into pixels. With ``norm_pix_loss`` the model predicts each patch
    *standardised*; to show it we borrow the true patch's mean and standard deviation (as the
    MAE demo does for such models): the picture shows the predicted structure, while the
    brightness of each patch comes from the original."""
    if norm_pix_loss:
        target = patchify(images, patch_size)
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
        pred = pred * std + mean
    return unpatchify(pred, patch_size, images.shape[1])


@torch.no_grad()
def reconstruct(model: MAE, images, mask_ratio: float = 0.75, generator=None) -> Reconstruction:
    """Mask, encode, decode, and paste the visible patches back (for figures), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        images = images.to(device)
        _, pred, mask = model(images, mask_ratio=mask_ratio, generator=generator)
    finally:
        model.train(was_training)
    p, C = model.patch_size, images.shape[1]
    prediction = patch_predictions_to_pixels(pred, images, p, model.norm_pix_loss)
    mask_image = unpatchify(mask.unsqueeze(-1).expand(-1, -1, p * p * C), p, C)
    pasted = images * (1 - mask_image) + prediction * mask_image
    return Reconstruction(images.cpu(), mask_image.cpu(), prediction.cpu(), pasted.cpu(),
                          ((pasted - images) ** 2).cpu())


def build_mae(P: Profile, decoder_dim: int | None = None, decoder_depth: int = 2, norm_pix_loss: bool = True,
              pool: str = "mean") -> MAE:
    """The course's MAE for profile ``P``: the standard ViT with sin-cos positions and a light decoder.

    ``pool="mean"``: the encoder's global feature (for probing) is the mean of its patch tokens.
    MAE reports mean pooling and the [CLS] token probe about equally; in MAE pretraining the
    [CLS] token gets no loss of its own, and on small runs the mean is the steadier choice.
    """
    vit = image_encoder(P, pos_embed="sincos", pool=pool)
    return MAE(vit, decoder_dim=decoder_dim or default_decoder_dim(P.dim), decoder_depth=decoder_depth,
               decoder_heads=P.heads, norm_pix_loss=norm_pix_loss)


def pretrain_mae(P: Profile, data, *, seed: int = 0, mask_ratio: float = 0.75, steps: int | None = None,
                 batch_size: int | None = None, lr: float | None = None, decoder_dim: int | None = None,
                 decoder_depth: int = 2, norm_pix_loss: bool = True, pool: str = "mean",
                 dataset: str = "synthcxr", device=None, progress: bool = True):
    """Train (or load from the cache) an MAE on the training images of ``data`` (a ``PreparedData``).

    Returns ``(model, info)`` from :func:`medmm_lite.hub.load_or_train`; ``info["history"]`` is
    the training :class:`~medmm_lite.train.History`. ``model.encoder`` is the pretrained ViT.
    """
    from ..data.tensors import TensorDictDataset  # medmm_lite.data (and SciPy) load on first use

    steps = steps or P.steps
    batch_size = batch_size or P.batch_size
    lr = lr or P.lr
    device = device or P.device
    decoder_dim = decoder_dim or default_decoder_dim(P.dim)
    train_idx = torch.as_tensor(data.splits["train"], dtype=torch.long)
    images = data.cohort.images[train_idx]

    # the fingerprint of the training data, not only its size: another split of the same size is another model
    key = {"profile": P.name, "dataset": dataset, "seed": seed, "n_studies": len(data.cohort),
           "n_train": len(train_idx), "data": data_fingerprint(data), "image_size": P.image_size, "patch_size": P.patch_size, "dim": P.dim,
           "depth": P.depth, "heads": P.heads, "steps": steps, "batch_size": batch_size, "lr": lr,
           "mask_ratio": mask_ratio, "decoder_dim": decoder_dim, "decoder_depth": decoder_depth,
           "norm_pix_loss": norm_pix_loss, "pool": pool}

    def build():
        with torch.random.fork_rng(devices=[]):  # the same initial weights for a seed, whatever ran before
            torch.manual_seed(seed)
            return build_mae(P, decoder_dim, decoder_depth, norm_pix_loss, pool)

    def train(model):
        masks = torch.Generator().manual_seed(seed)   # which patches are hidden, step by step

        def loss_fn(m, batch):
            loss, _, _ = m(batch["image"], mask_ratio=mask_ratio, generator=masks)
            return loss

        return fit(model, loss_fn, TensorDictDataset(image=images), steps=steps, batch_size=batch_size, lr=lr,
                   weight_decay=0.05, seed=seed, device=device, amp=P.amp, progress=progress, desc="MAE", rng=masks)

    return load_or_train("mae", train, build_fn=build, key=key, device=device)


__all__ = ["MAE", "PatchDecoder", "Reconstruction", "reconstruct", "build_mae", "pretrain_mae", "default_decoder_dim",
           "patch_predictions_to_pixels"]
