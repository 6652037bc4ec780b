"""Brain MRI phantoms: the same axial slice seen with three contrasts (T1, T2, FLAIR).

MRI does not measure one property of tissue: each sequence weights a different
one, so the same anatomy looks different on each. That makes registered
multi-contrast images a natural pair of "modalities" for image-image lessons
(translate T1 -> T2, contrastive pretraining across contrasts). Each phantom is
drawn once as tissue fractions (partial volume at the edges) and then rendered
with each contrast's tissue intensities, so the three images are registered by
construction: same head, same brain, same lesions, pixel for pixel.

    tissue     T1     T2     FLAIR   why
    fat        bright mid    mid     short T1 (scalp)
    bone       dark   dark   dark    few mobile protons (skull)
    CSF        dark   bright dark    long T1 and T2; FLAIR nulls free water
    grey m.    grey   grey+  grey+
    white m.   bright darker darker  myelin: shorter T1 and T2 than grey matter
    lesion     dark-  bright bright  demyelination / gliosis: more water, but not free water

Public: :func:`generate_mri_phantoms` -> :class:`MRIPhantoms`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from . import cache as _cache
from .synthcxr import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, soft

MRI_GENERATOR_VERSION = 1
MAX_PHANTOMS = 200_000
MAX_LESIONS = 4
CHUNK = 128
TISSUES = ("fat", "bone", "csf", "gm", "wm", "lesion")
CONTRASTS = {          # intensity of each tissue (TISSUES order) on each contrast
    "t1": (0.92, 0.04, 0.10, 0.45, 0.70, 0.34),
    "t2": (0.55, 0.04, 0.95, 0.62, 0.42, 0.88),
    "flair": (0.50, 0.04, 0.07, 0.58, 0.42, 0.95),
}


@dataclass(eq=False)
class MRIPhantoms:
    """Registered T1/T2/FLAIR slices. Images (n, 1, H, W) float32 in [0, 1]."""
    t1: torch.Tensor
    t2: torch.Tensor
    flair: torch.Tensor
    lesion_mask: torch.Tensor       # (n, 1, H, W) float {0, 1}
    brain_mask: torch.Tensor        # (n, 1, H, W) float {0, 1}: brain parenchyma and ventricles
    has_lesion: torch.Tensor        # (n,) bool: any lesion pixel in lesion_mask
    n_lesions: np.ndarray           # (n,) int64 lesions drawn (one can hide in a ventricle)
    image_size: int = 64
    seed: int = 0

    def __len__(self) -> int:
        return len(self.has_lesion)

    def subset(self, idx) -> "MRIPhantoms":
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        idx = np.arange(len(self))[idx]
        t = torch.from_numpy(idx)
        return MRIPhantoms(**{f.name: (getattr(self, f.name)[t] if isinstance(getattr(self, f.name), torch.Tensor)
                                       else getattr(self, f.name)[idx] if isinstance(getattr(self, f.name), np.ndarray)
                                       else getattr(self, f.name)) for f in fields(self)})


def _check(n, image_size, seed, cache):
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 0 < n <= MAX_PHANTOMS:
        raise ValueError(f"n must be an int between 1 and {MAX_PHANTOMS}, got {n!r}")
    if (not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool)
            or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE):
        raise ValueError(f"image_size must be an int between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE}, got {image_size!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(cache, bool):
        raise ValueError(f"cache must be True or False, got {cache!r}")


def generate_mri_phantoms(n: int, image_size: int = 64, seed: int = 0, cache: bool = True) -> MRIPhantoms:
    """`n` brain phantoms, each as registered T1, T2 and FLAIR slices; about half have 1-4
    white-matter lesions (bright on T2 and FLAIR, dark on T1). Deterministic for a seed."""
    _check(n, image_size, seed, cache)
    path = None
    if cache:
        key = _cache.cache_key("mri", MRI_GENERATOR_VERSION, n=int(n), image_size=int(image_size), seed=int(seed))
        path = _cache.cache_path("mri", f"mri_{n}_{image_size}px_seed{seed}", key)
        hit = _cache.load(path)
        if hit is not None:
            return _from_arrays(hit[0], int(image_size), int(seed))
    arrays = _generate(int(n), int(image_size), int(seed))
    if cache:
        _cache.save(path, arrays, {"image_size": int(image_size), "seed": int(seed)})
    return _from_arrays(arrays, int(image_size), int(seed))


def _from_arrays(a: dict, image_size: int, seed: int) -> MRIPhantoms:
    img = lambda x: torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1).float().div_(255.0)   # noqa: E731
    mask = lambda x: torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1).float()               # noqa: E731
    return MRIPhantoms(t1=img(a["t1"]), t2=img(a["t2"]), flair=img(a["flair"]), lesion_mask=mask(a["lesion_mask"]),
                       brain_mask=mask(a["brain_mask"]),
                       has_lesion=torch.from_numpy(a["lesion_mask"].reshape(len(a["lesion_mask"]), -1).any(axis=1)),
                       n_lesions=a["n_lesions"].astype(np.int64), image_size=image_size, seed=seed)


def _sample(rng: np.random.Generator, n: int) -> dict:
    u = rng.uniform
    P = {"cx": u(0.47, 0.53, n), "cy": u(0.47, 0.53, n), "rot": rng.normal(0, 0.06, n),
         "ax": u(0.34, 0.39, n), "ay": u(0.41, 0.46, n),
         "gyri_phase": u(0, 2 * np.pi, (n, 3)), "gyri_k": rng.integers(7, 13, (n, 3)),
         "atrophy": u(0.0, 1.0, n),                              # bigger ventricles and sulci with age
         "bias": rng.normal(0.0, 0.08, (n, 3, 2)),               # per-contrast coil shading (linear)
         "tissue_jitter": rng.normal(1.0, 0.04, (n, 3, len(TISSUES))),
         "noise": u(0.01, 0.03, n)}
    has = rng.random(n) < 0.5
    P["n_lesions"] = np.where(has, rng.integers(1, MAX_LESIONS + 1, n), 0)
    # lesions sit in the periventricular white matter: angle around the centre, radius outside the ventricles
    P["les_angle"] = u(0, 2 * np.pi, (n, MAX_LESIONS))
    P["les_rho"] = u(0.33, 0.5, (n, MAX_LESIONS))
    P["les_r"] = u(0.05, 0.09, (n, MAX_LESIONS))              # in head-normalised units
    P["les_elong"] = u(1.0, 1.8, (n, MAX_LESIONS))
    return P


def _generate(n: int, size: int, seed: int) -> dict:
    P = _sample(np.random.default_rng([seed, 0x4D5249]), n)
    out = {k: np.empty((n, size, size), np.uint8) for k in ("t1", "t2", "flair", "lesion_mask", "brain_mask")}
    for start in range(0, n, CHUNK):
        sl = slice(start, min(n, start + CHUNK))
        rng = np.random.default_rng([seed, 0x4D5249, 1 + start // CHUNK])
        for k, v in _render_chunk({k: v[sl] for k, v in P.items()}, size, rng).items():
            out[k][sl] = v
    out["n_lesions"] = P["n_lesions"].astype(np.int64)
    return out


def _render_chunk(P: dict, size: int, rng) -> dict:
    B = len(P["cx"])
    c = lambda x: np.asarray(x, np.float32).reshape(B, 1, 1)   # noqa: E731
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    x = grid.reshape(1, 1, size) - c(P["cx"])
    y = grid.reshape(1, size, 1) - c(P["cy"])
    cos, sin = c(np.cos(P["rot"])), c(np.sin(P["rot"]))
    xr, yr = x * cos + y * sin, y * cos - x * sin
    # head-normalised radius (1 = outer edge of the scalp) and angle
    X, Y = xr / c(P["ax"]), yr / c(P["ay"])
    rho = np.sqrt(X * X + Y * Y)
    theta = np.arctan2(Y, X)
    px = c(1.0 / (size * np.minimum(P["ax"], P["ay"])))           # one pixel in normalised units

    gyri = np.zeros_like(rho)
    for k in range(3):
        gyri += np.cos(c(P["gyri_k"][:, k]) * (k + 1) * 0.6 * theta + c(P["gyri_phase"][:, k]))
    gyri /= 3.0                                                   # roughly in [-1, 1]
    atrophy = c(P["atrophy"])
    head = soft(rho - 1.0, px)
    inner_table = soft(rho - 0.92, px)                           # inside the skull
    dura = soft(rho - 0.85, px)                                  # inside the CSF space
    brain = soft(rho - (0.81 - 0.03 * atrophy + 0.025 * gyri), px)          # grey matter surface (sulci)
    wm = soft(rho - (0.62 - 0.02 * atrophy + 0.07 * gyri), px)              # white matter (gyral cores)
    # lateral ventricles: two tilted ellipses beside the midline, larger with atrophy
    vent = np.zeros_like(rho)
    for s in (-1.0, 1.0):
        vx, vy = X - s * 0.12, Y + 0.02
        a, b = 0.07 + 0.05 * atrophy, 0.26 + 0.04 * atrophy
        ang = s * 0.35
        ex, ey = vx * np.cos(ang) + vy * np.sin(ang), vy * np.cos(ang) - vx * np.sin(ang)
        d = ((ex / a) ** 2 + (ey / b) ** 2 - 1.0) * 0.5 * a
        vent = np.maximum(vent, soft(d, px))
    lesion = np.zeros_like(rho)
    for k in range(MAX_LESIONS):
        on = c(P["n_lesions"] > k)
        lx = c(P["les_rho"][:, k] * np.cos(P["les_angle"][:, k]))
        ly = c(P["les_rho"][:, k] * np.sin(P["les_angle"][:, k]))
        r, e = c(P["les_r"][:, k]), c(P["les_elong"][:, k])
        d = np.sqrt(((X - lx) / e) ** 2 + (Y - ly) ** 2) - r
        lesion = np.maximum(lesion, soft(d, px) * on)

    f_fat = head - inner_table
    f_bone = inner_table - dura
    f_csf = dura - brain
    f_gm = brain - wm
    f_wm = wm.copy()
    f_csf += vent * (f_gm + f_wm)                                  # ventricles displace brain
    f_gm *= 1.0 - vent
    f_wm *= 1.0 - vent
    f_les = lesion * (f_wm + 0.5 * f_gm)                           # lesions in white matter (and at its edge)
    f_wm -= lesion * f_wm
    f_gm -= lesion * 0.5 * f_gm
    fractions = (f_fat, f_bone, f_csf, f_gm, f_wm, f_les)

    out = {}
    xs, ys = xr / 0.5, yr / 0.5
    for ci, (name, values) in enumerate(CONTRASTS.items()):
        img = np.zeros_like(rho)
        for ti, (frac, value) in enumerate(zip(fractions, values)):
            img += frac * (value * c(P["tissue_jitter"][:, ci, ti]))
        img *= 1.0 + c(P["bias"][:, ci, 0]) * xs + c(P["bias"][:, ci, 1]) * ys      # coil shading
        sigma = c(P["noise"])
        n1 = rng.standard_normal(img.shape, dtype=np.float32)
        n2 = rng.standard_normal(img.shape, dtype=np.float32)
        img = np.sqrt((img + sigma * n1) ** 2 + (sigma * n2) ** 2)   # magnitude images: Rician noise
        out[name] = np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    out["lesion_mask"] = (f_les > 0.5).astype(np.uint8)
    out["brain_mask"] = (brain > 0.5).astype(np.uint8)
    return out
