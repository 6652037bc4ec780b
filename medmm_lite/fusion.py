"""Images with labs: a small late-fusion classifier, and what it does when a modality is missing.

A radiologist reads the film knowing the patient's labs (a high BNP makes edema likelier, a
fever and a high white count make a consolidation likelier). The review's guideline for
policy makers asks what a multimodal model does when one input is not there: at another
hospital, or for a patient whose labs were not drawn. This module is the smallest model that
can answer it:

    image features (frozen encoder) --BatchNorm, Linear, GELU-----------> e_img   (or m_img if missing)
    standardised labs (BNP, WBC, T, SpO2) --MLP (the labs encoder)-----> e_lab   (or m_lab if missing)
    [e_img, e_lab] --MLP--> one logit per finding

A missing modality is replaced by a **learned "missing" embedding** (``m_img``, ``m_lab``), not
by zeros: a zero vector is a possible real embedding (the model cannot tell "absent" from
"average"), while a learned vector is a token that means "not available", and the head learns
what to predict without it, *if* it ever saw it during training. That is what **modality
dropout** does: while training, each sample loses its image or its labs with probability ``p``
(never both). Trained without it the missing embeddings never receive a gradient and stay at
their initial value; the model has never seen a study without labs, and it shows.

Lesson 12 uses it for the missing-modality sensitivity table; lesson 11 for "which modality pairs help".
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .data.findings import LAB_NAMES
from .data.tensors import TensorDictDataset
from .hub import load_or_train
from .train import fit

MODALITIES = ("image", "labs")
LOG_LABS = ("BNP",)   # right-skewed (log-normal): standardised on the log scale


def standardise_labs(labs, lab_names=LAB_NAMES, stats: dict | None = None):
    """Labs in clinical units (N, L) -> z-scores (N, L) float32, and the statistics used.

    BNP is log-transformed first (it spans 5 to 35,000 pg/mL). Pass the training set's
    ``stats`` when standardising validation or test labs, so they share one scale.
    """
    x = labs.detach().cpu().numpy() if isinstance(labs, torch.Tensor) else np.asarray(labs)
    x = x.astype(np.float64).copy()
    if x.ndim != 2 or x.shape[1] != len(lab_names):
        raise ValueError(f"labs must be (N, {len(lab_names)}) in the order {tuple(lab_names)}, got {x.shape}")
    for j, name in enumerate(lab_names):
        if name in LOG_LABS:
            x[:, j] = np.log(np.clip(x[:, j], 1e-3, None))
    if stats is None:
        stats = {"mean": x.mean(0).tolist(), "std": np.maximum(x.std(0), 1e-6).tolist(), "lab_names": list(lab_names)}
    z = (x - np.asarray(stats["mean"])) / np.asarray(stats["std"])
    return torch.from_numpy(z.astype(np.float32)), stats


class FusionClassifier(nn.Module):
    """Late fusion of frozen image features and standardised labs, with learned missing embeddings.

    Args:
        image_dim: width of the image features; n_labs: number of labs.
        num_classes: outputs (one logit per finding).
        hidden: width of each modality's embedding and of the head.
    """

    def __init__(self, image_dim: int, n_labs: int, num_classes: int, hidden: int = 64):
        super().__init__()
        for name, value in (("image_dim", image_dim), ("n_labs", n_labs), ("num_classes", num_classes),
                            ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.image_dim, self.n_labs = image_dim, n_labs
        # affine-free BatchNorm: features of different encoders differ in scale (as in the linear probe)
        self.image_encoder = nn.Sequential(nn.BatchNorm1d(image_dim, affine=False, momentum=None),
                                           nn.Linear(image_dim, hidden), nn.GELU())
        self.labs_encoder = nn.Sequential(nn.Linear(n_labs, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.missing_image = nn.Parameter(torch.zeros(hidden))
        self.missing_labs = nn.Parameter(torch.zeros(hidden))
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, num_classes))

    @staticmethod
    def _present(mask, n: int, device) -> torch.Tensor:
        if mask is None:
            return torch.ones(n, dtype=torch.bool, device=device)
        if isinstance(mask, bool):
            return torch.full((n,), mask, dtype=torch.bool, device=device)
        mask = torch.as_tensor(mask, device=device).bool()
        if mask.shape != (n,):
            raise ValueError(f"a presence mask must be a bool or shape ({n},), got {tuple(mask.shape)}")
        return mask

    def embed(self, image_features, labs, image_present=None, labs_present=None) -> torch.Tensor:
        """(B, 2 * hidden): each modality's embedding, or its missing embedding where absent."""
        if image_features.ndim != 2 or image_features.shape[1] != self.image_dim:
            raise ValueError(f"image_features must be (B, {self.image_dim}), got {tuple(image_features.shape)}")
        if labs.ndim != 2 or labs.shape[1] != self.n_labs or len(labs) != len(image_features):
            raise ValueError(f"labs must be (B={len(image_features)}, {self.n_labs}), got {tuple(labs.shape)}")
        n, device = len(labs), labs.device
        has_image = self._present(image_present, n, device)[:, None]
        has_labs = self._present(labs_present, n, device)[:, None]
        e_image = torch.where(has_image, self.image_encoder(image_features), self.missing_image)
        e_labs = torch.where(has_labs, self.labs_encoder(labs), self.missing_labs)
        return torch.cat([e_image, e_labs], dim=1)

    def forward(self, image_features, labs, image_present=None, labs_present=None) -> torch.Tensor:
        """Logits (B, num_classes). ``image_present`` / ``labs_present``: None (all present), a
        bool for the whole batch, or a (B,) bool mask."""
        return self.head(self.embed(image_features, labs, image_present, labs_present))


def modality_dropout_masks(n: int, p: float, generator: torch.Generator | None = None, device=None):
    """Presence masks ``(image_present, labs_present)`` for ``n`` samples: each modality is
    dropped with probability ``p``, and where both would be dropped one of them (at random) is kept."""
    if not 0 <= p < 1:
        raise ValueError(f"modality dropout p must be in [0, 1), got {p}")
    u = torch.rand(3, n, generator=generator)
    image = u[0] >= p
    labs = u[1] >= p
    neither = ~image & ~labs
    image = image | (neither & (u[2] < 0.5))
    labs = labs | (neither & (u[2] >= 0.5))
    return image.to(device), labs.to(device)


def train_fusion(image_features, labs, labels, *, use=MODALITIES, modality_dropout: float = 0.0, steps: int = 300,
                 batch_size: int = 256, lr: float = 3e-3, hidden: int = 64, seed: int = 0, device=None,
                 progress: bool = True, cache_key: dict | None = None):
    """Train a :class:`FusionClassifier` with multi-label BCE; return ``(model, history)``.

    Args:
        image_features: (N, D) frozen features; labs: (N, L) standardised (:func:`standardise_labs`);
        labels: (N, C) 0/1.
        use: the modalities the model may see: ``("image", "labs")``, ``("image",)`` or ``("labs",)``;
            a modality not used is always given as missing (an image-only model is the same network
            with its labs embedding fixed to ``m_lab``).
        modality_dropout: ``p`` for :func:`modality_dropout_masks` (used only when both modalities are used).
        cache_key: when given, the model is cached with :func:`medmm_lite.hub.load_or_train` under this
            key (add what identifies the features: encoder, profile, seed, split).
    """
    use = tuple(use)
    if not use or any(m not in MODALITIES for m in use):
        raise ValueError(f"use must be a non-empty subset of {MODALITIES}, got {use!r}")
    x = torch.as_tensor(image_features, dtype=torch.float32)
    z = torch.as_tensor(labs, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.float32)
    if not (len(x) == len(z) == len(y)):
        raise ValueError(f"image_features, labs and labels must have the same rows, got {len(x)}, {len(z)}, {len(y)}")

    def build():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return FusionClassifier(x.shape[1], z.shape[1], y.shape[1], hidden)

    def train(model):
        generator = torch.Generator().manual_seed(seed + 17)
        both = len(use) == 2

        def loss_fn(m, batch):
            n = len(batch["labels"])
            if both and modality_dropout > 0 and m.training:
                image_present, labs_present = modality_dropout_masks(n, modality_dropout, generator,
                                                                     batch["labels"].device)
            else:
                image_present, labs_present = "image" in use, "labs" in use
            logits = m(batch["image"], batch["labs"], image_present, labs_present)
            return nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"])

        name = "+".join(use) + (f" (modality dropout {modality_dropout:g})" if modality_dropout and len(use) == 2 else "")
        return fit(model, loss_fn, TensorDictDataset(image=x, labs=z, labels=y), steps=steps,
                   batch_size=min(batch_size, len(y)), lr=lr, weight_decay=1e-4, seed=seed, device=device,
                   progress=progress, desc=f"fusion {name}", rng=generator)

    if cache_key is not None:
        key = {**cache_key, "use": list(use), "modality_dropout": float(modality_dropout), "steps": steps,
               "batch_size": batch_size, "lr": lr, "hidden": hidden, "seed": seed, "n": len(y)}
        model, info = load_or_train("fusion", train, build_fn=build, key=key, device=device)
        return model.eval(), info.get("history")
    model = build()
    history = train(model)
    return model.eval(), history


@torch.no_grad()
def predict_fusion(model: FusionClassifier, image_features, labs, *, image: bool = True, labs_present: bool = True,
                   batch_size: int = 4096) -> torch.Tensor:
    """Sigmoid scores (N, C) on the CPU with the image and/or the labs given as present or missing."""
    if not (image or labs_present):
        raise ValueError("at least one modality must be present")
    model.eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(image_features, dtype=torch.float32)
    z = torch.as_tensor(labs, dtype=torch.float32)
    out = [torch.sigmoid(model(x[i:i + batch_size].to(device), z[i:i + batch_size].to(device), image, labs_present))
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).float().cpu()


CONDITIONS = {"image + labs": (True, True), "image only": (True, False), "labs only": (False, True)}


def sensitivity_table(models: dict, image_features, labs, labels, metric, conditions=CONDITIONS) -> dict:
    """``{model name: {condition: metric(labels, scores)}}`` for each test condition
    (``"image + labs"``, ``"image only"`` = labs missing, ``"labs only"`` = image missing).
    ``models`` maps a name to ``(model, use)``; a model is given only the modalities it uses (an
    image-only model scores the same with or without labs), and NaN where it is left with none."""
    table = {}
    for name, (model, use) in models.items():
        row = {}
        for condition, (has_image, has_labs) in conditions.items():
            has_image, has_labs = has_image and "image" in use, has_labs and "labs" in use
            if not (has_image or has_labs):
                row[condition] = float("nan")
                continue
            scores = predict_fusion(model, image_features, labs, image=has_image, labs_present=has_labs)
            row[condition] = float(metric(labels, scores))
        table[name] = row
    return table


__all__ = ["MODALITIES", "CONDITIONS", "standardise_labs", "FusionClassifier", "modality_dropout_masks",
           "train_fusion", "predict_fusion", "sensitivity_table"]
