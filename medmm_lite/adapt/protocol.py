"""The course's evaluation protocol: label-efficiency curves.

The review compares pretraining methods by how well a model does on a downstream
task when only a fraction of the labels is available (1%, 10%, 100%: the CheXpert
protocol of GLoRIA and ConVIRT). Two curves recur in every lesson:

* ``probe_curve``: freeze a pretrained encoder, extract features once, train a linear
  probe on 1/10/100% of the training labels, report test AUROC.
* ``supervised_curve``: train the same backbone from scratch on those labels (lesson 01's
  label-hungry baseline), cached so later lessons reuse it.

AUROC is macro-averaged over the nine pathologies ("No Finding" is derived from them).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..backbones import image_encoder
from ..data.augment import light_augment
from ..data.findings import FINDINGS, PATHOLOGIES
from ..data.tensors import TensorDictDataset
from ..eval import auroc
from ..hub import load_or_train
from ..train import fit
from .probe import extract_features, linear_probe

LABEL_FRACTIONS = (0.01, 0.1, 1.0)
PATHOLOGY_COLUMNS = [FINDINGS.index(f) for f in PATHOLOGIES]


def label_subset(train_idx, labels, fraction: float, seed: int = 0, min_positives: int = 1) -> np.ndarray:
    """A random ``fraction`` of the training studies, topped up so each pathology that has
    positives in the full training set keeps at least ``min_positives`` of them (with 1% of
    a small cohort, a finding would otherwise vanish and its AUROC could not be learned)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    train_idx = np.asarray(train_idx)
    labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    rng = np.random.default_rng(seed)
    order = rng.permutation(train_idx)
    n = max(1, int(math.ceil(fraction * len(train_idx))))
    chosen, rest = list(order[:n]), order[n:]
    for k in PATHOLOGY_COLUMNS:
        have = int(labels[chosen, k].sum())
        extra = [i for i in rest if labels[i, k] == 1][: max(0, min_positives - have)]
        chosen.extend(extra)
        rest = np.setdiff1d(rest, extra, assume_unique=True) if extra else rest
    return np.sort(np.asarray(chosen, dtype=np.int64))


def pathology_auroc(labels, scores) -> dict:
    """Macro and per-pathology AUROC on the nine pathologies."""
    labels = labels[:, PATHOLOGY_COLUMNS] if labels.shape[1] == len(FINDINGS) else labels
    scores = scores[:, PATHOLOGY_COLUMNS] if scores.shape[1] == len(FINDINGS) else scores
    return auroc(labels, scores, names=list(PATHOLOGIES))


def probe_curve(encoder, cohort, splits, *, fractions=LABEL_FRACTIONS, steps: int = 300, seed: int = 0,
                device=None, features=None) -> dict:
    """Linear-probe AUROC of a frozen encoder at each label fraction.

    Returns ``{fraction: {"macro": float, "per_finding": {...}, "n_labels": int}}``.
    Pass ``features=(train_features, test_features)`` to skip extraction.
    """
    train_idx, test_idx = splits["train"], splits["test"]
    if features is None:
        train_x = extract_features(encoder, cohort.images[train_idx], device=device)
        test_x = extract_features(encoder, cohort.images[test_idx], device=device)
    else:
        train_x, test_x = features
    labels = cohort.labels[:, PATHOLOGY_COLUMNS]
    position = {int(j): i for i, j in enumerate(train_idx)}
    curve = {}
    for fraction in fractions:
        subset = label_subset(train_idx, cohort.labels, fraction, seed=seed)
        rows = [position[int(j)] for j in subset]
        probe = linear_probe(train_x[rows], labels[subset], test_x, steps=steps, seed=seed, device=device)
        result = pathology_auroc(labels[test_idx], probe.test_scores)
        curve[fraction] = {"macro": result["macro"], "per_finding": result["per_finding"], "n_labels": len(subset)}
    return curve


class Classifier(nn.Module):
    """An image encoder with a linear head on its global features."""

    def __init__(self, encoder: nn.Module, num_classes: int = len(PATHOLOGIES)):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.dim, num_classes)

    def forward(self, images):
        return self.head(self.encoder(images).global_features)


def train_classifier(model: Classifier, images, labels, *, steps: int, batch_size: int, lr: float, seed: int = 0,
                     device=None, amp=None, augment=light_augment, weight_decay: float = 0.05, progress=True,
                     desc=None, params=None):
    """Supervised training with multi-label BCE; returns the :class:`History`."""
    generator = torch.Generator().manual_seed(seed)

    def loss_fn(m, batch):
        x = batch["image"]
        if augment is not None and m.training:
            x = augment(x, generator=generator if x.device.type == "cpu" else None)
        return nn.functional.binary_cross_entropy_with_logits(m(x), batch["labels"])

    data = TensorDictDataset(image=images, labels=labels)
    return fit(model, loss_fn, data, steps=steps, batch_size=min(batch_size, len(data)), lr=lr,
               weight_decay=weight_decay, seed=seed, device=device, amp=amp, progress=progress, desc=desc,
               params=params)


@torch.no_grad()
def predict(model: nn.Module, images, batch_size: int = 512, device=None) -> torch.Tensor:
    """Sigmoid scores of a classifier, in eval mode, batched."""
    model.eval()
    device = device or next(model.parameters()).device
    out = [torch.sigmoid(model(images[i:i + batch_size].to(device))).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def supervised_curve(build_encoder, cohort, splits, *, fractions=LABEL_FRACTIONS, steps: int, batch_size: int,
                     lr: float, seed: int = 0, device=None, amp=None, cache_key: dict | None = None,
                     progress=True) -> dict:
    """Train ``Classifier(build_encoder())`` from scratch at each label fraction; test AUROC.

    Each model is initialised from ``seed`` under a forked random state, so the curve is the same
    whatever ran before it in a lesson (and a cached model is the one this call would train).
    With ``cache_key`` (profile, seed, sizes...), each trained model is cached by
    ``load_or_train``, so a later lesson gets the baseline without retraining.
    """
    train_idx, test_idx = splits["train"], splits["test"]
    labels = cohort.labels[:, PATHOLOGY_COLUMNS]
    curve = {}
    for fraction in fractions:
        subset = label_subset(train_idx, cohort.labels, fraction, seed=seed)

        def train(model, subset=subset, fraction=fraction):
            return train_classifier(model, cohort.images[subset], labels[subset], steps=steps,
                                    batch_size=batch_size, lr=lr, seed=seed, device=device, amp=amp,
                                    progress=progress, desc=f"supervised {fraction:.0%}")

        def build():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return Classifier(build_encoder())

        if cache_key is not None:
            key = {**cache_key, "fraction": fraction, "steps": steps, "batch_size": batch_size, "lr": lr,
                   "seed": seed, "n_train": len(train_idx)}
            model, info = load_or_train("supervised_baseline", train, build_fn=build, key=key, device=device)
            history = info.get("history")
        else:
            model = build()
            history = train(model)
        scores = predict(model, cohort.images[test_idx], device=device)
        result = pathology_auroc(labels[test_idx], scores)
        curve[fraction] = {"macro": result["macro"], "per_finding": result["per_finding"], "n_labels": len(subset),
                           "history": history, "model": model, "test_scores": scores}
    return curve


def supervised_budget(P) -> tuple[int, int]:
    """``(steps, batch_size)`` for training a classifier from scratch in profile ``P``.

    The profile's images seen (``P.steps * P.batch_size``), in twice as many updates of half the
    size. At the cpu budget the ViT is still learning when its steps run out, and the number of
    updates matters more than the batch: 1,200 updates of 32 studies took lesson 01's ViT from
    0.83 to 0.89 validation AUROC at 100% labels for the same time (docs/performance.md).
    Contrastive pretraining keeps ``P.batch_size``: its negatives are the rest of the batch.
    """
    return 2 * P.steps, max(1, P.batch_size // 2)


def supervised_baseline(P, data, *, seed: int = 0, dataset: str = "synthcxr", fractions=LABEL_FRACTIONS,
                        device=None, progress=True) -> dict:
    """Lesson 01's baseline: the standard ViT trained from scratch at each label fraction.

    Cached under one key (profile, cohort, seed), so every lesson that compares with it
    reuses lesson 01's models instead of training them again.
    """
    cohort = data.cohort
    steps, batch_size = supervised_budget(P)
    key = {"profile": P.name, "dataset": dataset, "n_studies": len(cohort), "image_size": P.image_size,
           "dim": P.dim, "depth": P.depth, "vit_stem": P.vit_stem, "vit_pool": P.vit_pool, "steps": steps,
           "batch_size": batch_size}
    return supervised_curve(lambda: image_encoder(P), cohort, data.splits, fractions=fractions, steps=steps,
                            batch_size=batch_size, lr=P.lr, seed=seed, device=device or P.device, amp=P.amp,
                            cache_key=key, progress=progress)
