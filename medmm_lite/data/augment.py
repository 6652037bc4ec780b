"""Batch image augmentations in torch, vectorised: one call transforms a whole batch.

Chest radiographs are not natural photos: flipping left-right changes laterality
(a left effusion becomes a right one) and colour jitter is meaningless on one channel.
So the course uses crops, small rotations, intensity (window) changes, blur and noise.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n, low, high, generator, device):
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def random_resized_crop(images, scale=(0.6, 1.0), max_rotation_deg: float = 10.0, max_shift: float = 0.1,
                        generator=None):
    """Zoom into a random region (area fraction in ``scale``), rotate and shift a little; same output size."""
    n = images.shape[0]
    dev = images.device
    zoom = _uniform(n, *scale, generator, dev).sqrt()
    angle = _uniform(n, -max_rotation_deg, max_rotation_deg, generator, dev) * math.pi / 180
    room = (1 - zoom).clamp(min=0) + max_shift
    tx = _uniform(n, -1, 1, generator, dev) * room
    ty = _uniform(n, -1, 1, generator, dev) * room
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def intensity_jitter(images, contrast=(0.7, 1.3), brightness: float = 0.1, gamma=(0.7, 1.4), generator=None):
    """Change the window: contrast around the image mean, brightness shift, gamma."""
    n = images.shape[0]
    dev = images.device
    shape = (n,) + (1,) * (images.ndim - 1)
    c = _uniform(n, *contrast, generator, dev).view(shape)
    b = _uniform(n, -brightness, brightness, generator, dev).view(shape)
    g = torch.exp(_uniform(n, math.log(gamma[0]), math.log(gamma[1]), generator, dev)).view(shape)
    mean = images.mean(dim=tuple(range(1, images.ndim)), keepdim=True)
    out = ((images - mean) * c + mean + b).clamp(0, 1)
    return out.pow(g)


def gaussian_blur(images, sigma=(0.1, 1.0), p: float = 0.5, generator=None):
    """Blur a random subset of the batch with a per-image sigma (separable 5-tap kernel)."""
    n = images.shape[0]
    dev = images.device
    s = _uniform(n, *sigma, generator, dev)
    taps = torch.arange(-2, 3, device=dev, dtype=images.dtype)
    kernel = torch.exp(-taps[None] ** 2 / (2 * s[:, None] ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)                       # (n, 5)
    c = images.shape[1]
    x = images.reshape(1, n * c, *images.shape[2:])
    kx = kernel.repeat_interleave(c, 0)[:, None, None, :]
    ky = kernel.repeat_interleave(c, 0)[:, None, :, None]
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), kx, groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), ky, groups=n * c)
    blurred = x.reshape(images.shape)
    keep = (torch.rand(n, generator=generator, device=dev) >= p).view(-1, *([1] * (images.ndim - 1)))
    return torch.where(keep, images, blurred)


def gaussian_noise(images, std=(0.0, 0.05), generator=None):
    n = images.shape[0]
    s = _uniform(n, *std, generator, images.device).view(-1, *([1] * (images.ndim - 1)))
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return (images + s * noise).clamp(0, 1)


def light_augment(images, generator=None):
    """For supervised training: small shifts/rotations and window changes keep the findings intact."""
    x = random_resized_crop(images, scale=(0.85, 1.0), max_rotation_deg=5, max_shift=0.05, generator=generator)
    return intensity_jitter(x, contrast=(0.85, 1.15), brightness=0.05, gamma=(0.85, 1.2), generator=generator)


def simclr_augment(images, generator=None):
    """SimCLR's recipe adapted to radiographs: strong crop, window jitter, blur, noise (no flips)."""
    x = random_resized_crop(images, scale=(0.4, 1.0), max_rotation_deg=10, generator=generator)
    x = intensity_jitter(x, generator=generator)
    x = gaussian_blur(x, generator=generator)
    return gaussian_noise(x, generator=generator)
