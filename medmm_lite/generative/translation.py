"""Image-to-image translation: MRI T1 -> T2 (or FLAIR) with a U-Net, optionally pix2pix.

The MRI phantoms (:func:`medmm_lite.data.generate_mri_phantoms`) are registered pixel for
pixel, so the target of every input is known: translation is supervised regression.

* **L1 only**: a :class:`~medmm_lite.generative.unet.UNet` (no time embedding) maps T1 to T2
  and is trained with the mean absolute error. L1 gets the contrast of each tissue right
  and keeps edges sharper than L2, but any detail it cannot predict is averaged (blur).
* **pix2pix** (Isola et al. 2017): add a conditional *PatchGAN* discriminator that sees
  (input, output) pairs and says, for each overlapping patch, whether it looks real. The
  generator minimises ``adversarial + 100 * L1`` (pix2pix's weight: L1 does most of the work,
  the adversarial term restores texture); the discriminator minimises
  ``(BCE(D(x, y), 1) + BCE(D(x, G(x)), 0)) / 2`` (halved, as in pix2pix, to slow D down).

``fit`` takes one loss and one optimiser, so :class:`Pix2Pix` returns one sum: the
generator's loss computed through a *detached copy* of the discriminator's weights (its
gradient reaches only G) plus the discriminator's loss on a *detached* fake (its gradient
reaches only D). One AdamW step then updates both at once (simultaneous rather than
alternating updates; with pix2pix's equal learning rates the difference is small).

Measure with :func:`medmm_lite.eval.psnr` and :func:`medmm_lite.eval.ssim`, against the
trivial baseline "the input is the answer" (:func:`identity_baseline`).
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..hub import load_or_train
from ..train import fit
from .unet import UNet

PIX2PIX_L1_WEIGHT = 100.0
CONTRASTS = ("t1", "t2", "flair")


class TranslationUNet(nn.Module):
    """A U-Net from one contrast to another. Images in [0, 1] in and out; inside, [-1, 1] and a
    tanh output (pix2pix's convention)."""

    def __init__(self, image_size: int, base_channels: int = 32, channel_mults: tuple[int, ...] = (1, 2, 4),
                 dropout: float = 0.0):
        super().__init__()
        self.unet = UNet(image_size, 1, 1, base_channels, channel_mults, time_embedding=False, dropout=dropout)
        self.image_size = image_size

    def forward(self, x):
        return (torch.tanh(self.unet(x * 2 - 1)) + 1) / 2


class PatchDiscriminator(nn.Module):
    """pix2pix's conditional PatchGAN: (source, image) stacked as channels -> a map of logits, one per
    overlapping patch ("is this patch of the image real, given the source?").

    ``n_layers`` stride-2 convolutions (4x4, LeakyReLU 0.2, InstanceNorm after the first), one
    stride-1, then a 1-channel output: with 3 layers at 256 px this is pix2pix's 70x70 PatchGAN;
    at 32-64 px, 2 layers give patches of 34 px.
    """

    def __init__(self, in_chans: int = 2, base_channels: int = 32, n_layers: int = 2):
        super().__init__()
        layers = [nn.Conv2d(in_chans, base_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        ch = base_channels
        for i in range(1, n_layers):
            out = base_channels * min(2 ** i, 8)
            layers += [nn.Conv2d(ch, out, 4, stride=2, padding=1), nn.InstanceNorm2d(out), nn.LeakyReLU(0.2)]
            ch = out
        out = base_channels * min(2 ** n_layers, 8)
        layers += [nn.Conv2d(ch, out, 4, stride=1, padding=1), nn.InstanceNorm2d(out), nn.LeakyReLU(0.2),
                   nn.Conv2d(out, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, source, image):
        if source.shape != image.shape:
            raise ValueError(f"source and image must have the same shape, got {tuple(source.shape)} and "
                             f"{tuple(image.shape)}")
        return self.net(torch.cat([source, image], dim=1))


def pix2pix_generator_loss(fake_logits, fake, target, l1_weight: float = PIX2PIX_L1_WEIGHT):
    """``BCE(D(x, G(x)), real) + l1_weight * |G(x) - y|``; returns ``(total, {"adv", "l1"})``."""
    if l1_weight < 0:
        raise ValueError(f"l1_weight must be >= 0, got {l1_weight}")
    adv = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    l1 = F.l1_loss(fake, target)
    return adv + l1_weight * l1, {"adv": adv.detach(), "l1": l1.detach()}


def pix2pix_discriminator_loss(real_logits, fake_logits):
    """``(BCE(D(x, y), real) + BCE(D(x, G(x)), fake)) / 2``, pix2pix's halved discriminator objective."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return 0.5 * (real + fake)


class Pix2Pix(nn.Module):
    """Generator + PatchGAN discriminator, trainable with one optimiser (see the module docstring).

    ``forward(x)`` translates (the generator alone); ``loss(source, target)`` -> ``(total, logs)``.
    """

    def __init__(self, generator: TranslationUNet, discriminator: PatchDiscriminator,
                 l1_weight: float = PIX2PIX_L1_WEIGHT):
        super().__init__()
        self.generator, self.discriminator, self.l1_weight = generator, discriminator, float(l1_weight)

    @property
    def image_size(self) -> int:
        return self.generator.image_size

    def forward(self, x):
        return self.generator(x)

    def loss(self, source, target):
        fake = self.generator(source)
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        g_loss, logs = pix2pix_generator_loss(functional_call(self.discriminator, frozen, (source, fake)), fake,
                                              target, self.l1_weight)
        d_loss = pix2pix_discriminator_loss(self.discriminator(source, target),
                                            self.discriminator(source, fake.detach()))
        return g_loss + d_loss, {**logs, "d_loss": d_loss.detach()}


def translation_loss(model: nn.Module, source, target):
    """The training loss of either model: L1 for a :class:`TranslationUNet`, pix2pix's for a :class:`Pix2Pix`."""
    for name, x in (("source", source), ("target", target)):
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"{name} must be images (B, 1, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if source.shape != target.shape:
        raise ValueError(f"source and target must have the same shape, got {tuple(source.shape)} and "
                         f"{tuple(target.shape)}")
    if isinstance(model, Pix2Pix):
        return model.loss(source, target)
    return F.l1_loss(model(source), target)


def _pairs(mri_pairs, source: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(mri_pairs, (tuple, list)) and len(mri_pairs) == 2:
        x, y = mri_pairs
    else:
        for name in (source, target):
            if name not in CONTRASTS:
                raise ValueError(f"source and target must be among {CONTRASTS}, got {name!r}")
        if source == target:
            raise ValueError(f"source and target are both {source!r}: nothing to translate")
        x, y = getattr(mri_pairs, source), getattr(mri_pairs, target)
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or x.shape != y.shape or x.ndim != 4:
        raise ValueError("mri_pairs must be MRIPhantoms or a (source, target) pair of (N, 1, H, W) tensors "
                         "of the same shape")
    return x.float(), y.float()


def identity_baseline(source, target) -> dict:
    """PSNR and SSIM of "predict the input unchanged": the floor a translation model must beat."""
    from ..eval import psnr, ssim

    return {"psnr": psnr(source, target), "ssim": ssim(source, target, win_size=_win(source))}


def _win(images) -> int:
    return 11 if min(images.shape[-2:]) >= 11 else 3


@torch.no_grad()
def translate(model: nn.Module, source, batch_size: int = 256) -> torch.Tensor:
    """Translate images (N, 1, H, W) in [0, 1], in eval mode, in batches; returned on the CPU."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        return torch.cat([model(source[i:i + batch_size].to(device)).cpu() for i in range(0, len(source), batch_size)])
    finally:
        model.train(was)


def evaluate_translation(model: nn.Module, source, target) -> dict:
    """PSNR and SSIM of the model's translations against the true target images."""
    from ..eval import psnr, ssim

    pred = translate(model, source)
    return {"psnr": psnr(pred, target), "ssim": ssim(pred, target, win_size=_win(target))}


def build_translation(image_size: int, *, adversarial: bool = False, base_channels: int = 16,
                      channel_mults: tuple[int, ...] = (1, 2, 4), disc_channels: int = 32, disc_layers: int = 2,
                      l1_weight: float = PIX2PIX_L1_WEIGHT, seed: int = 0) -> nn.Module:
    """A :class:`TranslationUNet`, or with ``adversarial`` a :class:`Pix2Pix`, initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = TranslationUNet(image_size, base_channels, channel_mults)
        if not adversarial:
            return generator
        return Pix2Pix(generator, PatchDiscriminator(2, disc_channels, disc_layers), l1_weight)


def _fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256(str(tuple(x.shape)).encode())
    for t in (x, y):
        h.update(t.flatten()[:: max(1, t.numel() // 200_000)].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def train_translation(P, mri_pairs, *, source: str = "t1", target: str = "t2", seed: int = 0,
                      steps: int | None = None, batch_size: int | None = None, lr: float | None = None,
                      adversarial: bool = False, l1_weight: float = PIX2PIX_L1_WEIGHT, base_channels: int | None = None,
                      channel_mults: tuple[int, ...] = (1, 2, 4), disc_channels: int = 32, disc_layers: int = 2,
                      device=None, progress: bool = True, retrain: bool = False):
    """Train (or load from the cache) a T1 -> T2 (or -> FLAIR) translator on ``mri_pairs``.

    ``mri_pairs``: :class:`~medmm_lite.data.MRIPhantoms` (pass only the training phantoms, e.g.
    ``phantoms.subset(train_idx)``), or a ``(source_images, target_images)`` pair. Images at their
    own size. ``adversarial=True`` trains pix2pix (PatchGAN + ``l1_weight`` * L1).
    ``base_channels`` defaults to 16 on the CPU and 32 on a GPU.

    Returns ``(model, info)``: a :class:`TranslationUNet` or :class:`Pix2Pix` in eval mode
    (``model(x)`` translates either way) and ``load_or_train``'s info.
    """
    from ..data.tensors import TensorDictDataset  # medmm_lite.data (and SciPy) load on first use

    x, y = _pairs(mri_pairs, source, target)
    steps = steps or P.steps
    lr = lr or P.lr
    device = device or P.device
    batch_size = min(batch_size or P.batch_size, len(x))
    base_channels = base_channels or (16 if str(device).startswith("cpu") else 32)
    size = int(x.shape[-1])

    def build():
        return build_translation(size, adversarial=adversarial, base_channels=base_channels,
                                 channel_mults=channel_mults, disc_channels=disc_channels, disc_layers=disc_layers,
                                 l1_weight=l1_weight, seed=seed)

    def train_fn(model):
        return fit(model, lambda m, b: translation_loss(m, b["source"], b["target"]),
                   TensorDictDataset(source=x, target=y), steps=steps, batch_size=batch_size, lr=lr,
                   weight_decay=0.0, seed=seed, device=device, amp=P.amp, progress=progress,
                   desc=f"{source} -> {target} ({'pix2pix' if adversarial else 'L1'})")

    key = {"profile": P.name, "data": _fingerprint(x, y), "n_pairs": len(x), "image_size": size,
           "source": source, "target": target, "seed": seed, "steps": steps, "batch_size": batch_size,
           "lr": float(lr), "adversarial": bool(adversarial), "l1_weight": float(l1_weight) if adversarial else None,
           "base_channels": base_channels, "channel_mults": list(channel_mults),
           "disc_channels": disc_channels if adversarial else None, "disc_layers": disc_layers if adversarial else None,
           "amp": bool(P.amp)}
    model, info = load_or_train("translation", train_fn, build_fn=build, key=key, device=device, retrain=retrain)
    return model.eval(), info


__all__ = ["TranslationUNet", "PatchDiscriminator", "Pix2Pix", "PIX2PIX_L1_WEIGHT", "pix2pix_generator_loss",
           "pix2pix_discriminator_loss", "translation_loss", "identity_baseline", "translate",
           "evaluate_translation", "build_translation", "train_translation"]
