"""Masked image modelling (MAE): hide most patches, predict their pixels back.

Two small functions, exactly as in MAE (He et al. 2022, ``facebookresearch/mae``):

* :func:`random_masking` keeps a random ``1 - mask_ratio`` of the patch tokens of
  each image. It draws one uniform number per patch, sorts them (``argsort``), keeps
  the patches with the smallest numbers and drops the rest: a per-sample shuffle
  without a Python loop. The encoder then sees only the kept tokens, which is
  what makes MAE cheap (at 75% masking it runs on a quarter of the sequence).
* :func:`mae_loss` is the mean squared error between predicted and true pixels,
  averaged over the **removed** patches only (predicting visible patches is a copy
  task and teaches nothing). With ``norm_pix_loss`` each target patch is first
  standardised by its own mean and variance, which MAE found gives better features:
  the model must predict local structure (edges, texture), not brightness.

The contract, used by every model that masks patches::

    x_kept, mask, ids_restore = random_masking(x, 0.75)
    # x_kept      (B, len_keep, D)   kept tokens, in shuffled order
    # mask        (B, L)             1 = removed, 0 = kept, in the ORIGINAL patch order
    # ids_restore (B, L)             gather index that puts [kept, removed] back in order:
    #     full = torch.cat([x_kept, mask_tokens], 1).gather(1, ids_restore[..., None].expand(-1, -1, D))
"""
from __future__ import annotations

import torch


def _random_uniform(shape, generator, device) -> torch.Tensor:
    """Uniform noise drawn on the generator's device (a CPU generator works for CUDA inputs too)."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def keep_count(num_tokens: int, mask_ratio: float) -> int:
    """How many of ``num_tokens`` patches stay visible: ``int(L * (1 - mask_ratio))``, MAE's rounding."""
    return int(num_tokens * (1 - mask_ratio))


def random_masking(x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None):
    """Keep a random subset of the tokens of each sample (MAE's per-sample shuffle).

    Args:
        x: (B, L, D) tokens, positions already added (the order is lost after this call).
        mask_ratio: fraction of tokens to remove, in [0, 1); ``int(L * (1 - mask_ratio))``
            tokens are kept, and at least one must be.
        generator: a ``torch.Generator`` for reproducible masks (default: the global RNG).

    Returns:
        ``(x_kept, mask, ids_restore)``: kept tokens (B, len_keep, D) in shuffled order;
        ``mask`` (B, L) in ``x``'s dtype, 1 where a token was removed, in the original order;
        ``ids_restore`` (B, L) long, the index that un-shuffles ``cat([kept, removed])``.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"random_masking expects tokens of shape (B, L, D), got {shape}; "
                         "for images, embed the patches first (e.g. vit.embed_patches(images))")
    if not isinstance(mask_ratio, (int, float)) or not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must be a number in [0, 1) (the fraction of tokens removed), got {mask_ratio!r}")
    B, L, D = x.shape
    if L == 0:
        raise ValueError(f"random_masking got no tokens to mask (x has shape {tuple(x.shape)}, L = 0); "
                         "check that the patch embedding produced tokens (image larger than one patch)")
    len_keep = keep_count(L, mask_ratio)
    if len_keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio} keeps no token out of {L}; lower it (at most {1 - 1 / L:.3f} "
                         "keeps one). To drop a whole modality, leave its tokens out instead")

    noise = _random_uniform((B, L), generator, x.device)
    ids_shuffle = torch.argsort(noise, dim=1)        # ascending: the smallest noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # the inverse permutation

    ids_keep = ids_shuffle[:, :len_keep]
    x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))

    # Built in shuffled order ([kept, removed] = [0..0, 1..1]), then un-shuffled to the original order.
    mask = torch.ones(B, L, device=x.device, dtype=x.dtype)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_kept, mask, ids_restore


def unshuffle(x_kept: torch.Tensor, fill: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """Put kept tokens and fillers (e.g. the decoder's mask token) back in patch order.

    ``x_kept`` (B, len_keep, D); ``fill`` (1 or B, 1, D), repeated for every removed patch;
    returns (B, L, D) where position ``i`` holds patch ``i``'s kept token or the filler.
    """
    B, len_keep, D = x_kept.shape
    L = ids_restore.shape[1]
    fillers = fill.to(x_kept.dtype).expand(B, L - len_keep, D)
    full = torch.cat([x_kept, fillers], dim=1)
    return torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(-1, -1, D))


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE's per-patch target normalisation: ``(t - mean) / sqrt(var + eps)`` over each patch's
    pixels, with the unbiased variance (``torch.var``'s default, as in MAE's code)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix_loss: bool = True,
             reduction: str = "mean") -> torch.Tensor:
    """MAE's reconstruction loss: per-patch MSE, averaged over removed patches only.

    Args:
        pred: (B, L, P) predicted patch values (P = p*p*C pixels per patch).
        target: (B, L, P) the true patches, ``patchify(images, p)``.
        mask: (B, L), 1 where the patch was removed (its loss counts), 0 where it was visible.
            Fractional weights work too (e.g. a mask times a per-sample weight).
        norm_pix_loss: standardise each target patch by its own mean and variance first.
        reduction: ``"mean"`` (the loss MAE trains on) or ``"none"``, the per-patch errors (B, L),
            unweighted, for maps and per-sample numbers.

    ``loss = sum_(b,l) mask[b,l] * mean_p (pred - target)^2 / sum mask``; it is NaN if nothing is masked.
    """
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be (B, L, p*p*C) patches of the same shape; got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)} (use patchify(images, patch_size) "
                         "for the target)")
    if tuple(mask.shape) != tuple(pred.shape[:2]):
        raise ValueError(f"mask must be (B, L) = {tuple(pred.shape[:2])}, one entry per patch; got {tuple(mask.shape)}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if reduction == "mean":
        weights = mask.detach()
        if bool((~torch.isfinite(weights) | (weights < 0)).any()):  # one check, one sync
            finite = weights[torch.isfinite(weights)]
            got = (f"a minimum of {float(finite.min()):g}" if finite.numel() and float(finite.min()) < 0
                   else "non-finite values")
            raise ValueError(f"mask must hold finite weights >= 0 (1 = removed patch, 0 = visible), got {got}. "
                             "A negative weight rewards a wrong prediction: use random_masking's mask, or clamp "
                             "your weights at 0")
    if norm_pix_loss:
        target = normalize_patches(target)
    per_patch = ((pred - target) ** 2).mean(dim=-1)   # (B, L): mean over the pixels of each patch
    if reduction == "none":
        return per_patch
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum()


__all__ = ["random_masking", "mae_loss", "unshuffle", "normalize_patches", "keep_count"]
