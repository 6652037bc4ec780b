"""Linear probing: how much a frozen encoder's features already know.

Freeze the pretrained encoder, compute one feature vector per image once, and train
only a linear classifier on top. The probe's AUROC measures the representation, not
the fine-tuning recipe, which is why papers (and lesson 09) compare pretraining
methods this way.

As in MAE, the classifier is preceded by a ``BatchNorm1d`` *without* learnable
scale and shift: it only standardises each feature dimension. Features from
different pretraining methods differ wildly in scale, and without this the same
learning rate would be too large for one encoder and too small for another.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..train import History, fit
from ..utils import get_device


class _FeatureDataset(torch.utils.data.Dataset):
    """(features, labels) rows, fetched a whole batch at a time."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i):
        return self.features[i], self.labels[i]

    def __getitems__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long, device=self.features.device)
        return self.features[index], self.labels[index]


def _as_float_matrix(name: str, x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or NumPy array of shape (N, D), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D) (one feature vector per image), got {tuple(x.shape)}")
    x = x.detach().float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or inf values: check the encoder that produced them")
    return x


class LinearProbe:
    """A trained probe: ``BatchNorm1d(D, affine=False)`` then ``Linear(D, C)``.

    Attributes:
        model: the ``nn.Sequential`` (in eval mode).
        history: the training :class:`~medmm_lite.train.History` (loss per step).
        test_scores: probabilities for the ``test_features`` given to :func:`linear_probe`, or None.
    """

    def __init__(self, model: nn.Sequential, history: History):
        self.model, self.history = model.eval(), history
        self.test_scores: torch.Tensor | None = None

    @property
    def num_features(self) -> int:
        return self.model[1].in_features

    @property
    def num_classes(self) -> int:
        return self.model[1].out_features

    @torch.no_grad()
    def predict_logits(self, features, batch_size: int = 4096) -> torch.Tensor:
        """Logits (N, C) on the CPU."""
        x = _as_float_matrix("features", features)
        if x.shape[1] != self.num_features:
            raise ValueError(f"features have {x.shape[1]} dimensions but the probe was trained on "
                             f"{self.num_features}: use features from the same encoder")
        self.model.eval()
        device = self.model[1].weight.device
        return torch.cat([self.model(x[i:i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(x), batch_size)]) if len(x) else torch.empty(0, self.num_classes)

    def predict_proba(self, features, batch_size: int = 4096) -> torch.Tensor:
        """Per-label probabilities (N, C) on the CPU: independent sigmoids (multi-label)."""
        return torch.sigmoid(self.predict_logits(features, batch_size))

    def __repr__(self) -> str:
        return f"LinearProbe(features={self.num_features}, classes={self.num_classes}, steps={len(self.history)})"


def linear_probe(train_features, train_labels, test_features=None, *, steps: int = 300, lr: float = 1e-2,
                 weight_decay: float = 1e-4, batch_size: int | None = None, seed: int = 0, device=None,
                 progress: bool = False) -> LinearProbe:
    """Train a linear probe on frozen features with multi-label binary cross-entropy.

    Args:
        train_features: (N, D) features of the training images (from :func:`extract_features`).
        train_labels: (N, C) 0/1 labels (one column per finding); a 1-D vector means C = 1.
        test_features: optional (M, D) features; their probabilities land in ``probe.test_scores``.
        steps, lr, weight_decay: AdamW with warmup and cosine decay (``medmm_lite.train.fit``).
            Lessons pass ``steps=P.probe_steps``.
        batch_size: ``None`` trains on the whole set each step (fine for a few thousand rows).
        seed: fixes the head's initialisation and the batch order: same seed, same probe.
        device: default CUDA when available.

    Returns:
        a :class:`LinearProbe` with ``.predict_proba(features)`` and ``.history``.
    """
    x = _as_float_matrix("train_features", train_features)
    y = train_labels if not isinstance(train_labels, np.ndarray) else torch.from_numpy(train_labels)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"train_labels must be a tensor or NumPy array, got {type(y).__name__}")
    y = y.detach().float()
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or len(y) != len(x):
        raise ValueError(f"train_labels must have shape (N, C) with N = {len(x)} rows like train_features, "
                         f"got {tuple(train_labels.shape)}")
    if not ((y == 0) | (y == 1)).all():
        raise ValueError("train_labels must be 0 or 1 (absent / present); map uncertain (-1) or missing "
                         "labels to 0 or 1, or drop those rows, before probing")
    if batch_size is None:
        batch_size = len(x)
    if len(x) < 2 or batch_size < 2:
        raise ValueError(f"a probe needs batches of at least 2 rows for its BatchNorm; got N={len(x)}, "
                         f"batch_size={batch_size}")

    with torch.random.fork_rng(devices=[]):  # seed the head's init without touching the global RNG
        torch.manual_seed(seed)
        head = nn.Linear(x.shape[1], y.shape[1])
        nn.init.trunc_normal_(head.weight, std=0.01)  # MAE's linear-probe initialisation
        nn.init.zeros_(head.bias)
    # momentum=None: the running statistics are the plain average over all training batches,
    # with no pull towards their initial values (mean 0, variance 1): after a short probe the
    # default momentum would still remember those, and mis-scale features with a small variance.
    model = nn.Sequential(nn.BatchNorm1d(x.shape[1], affine=False, eps=1e-6, momentum=None), head)
    criterion = nn.BCEWithLogitsLoss()

    def loss_fn(model, batch):
        features, labels = batch
        return criterion(model(features), labels)

    device = get_device() if device is None else torch.device(device)
    # The features are small: keep them on the device so no step copies them again.
    data = _FeatureDataset(x.to(device), y.to(device))
    history = fit(model, loss_fn, data, steps=steps, batch_size=batch_size, lr=lr,
                  weight_decay=weight_decay, seed=seed, device=device, progress=progress,
                  desc="linear probe", log_every=max(10, steps // 10))
    probe = LinearProbe(model, history)
    if test_features is not None:
        probe.test_scores = probe.predict_proba(test_features)
    return probe


def _global_features(output) -> torch.Tensor:
    """The per-image vector from an encoder's output: ``.global_features`` (the course's
    encoders), a ``"global_features"`` key, the first item of a tuple, or the tensor itself."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "global_features"):
        return output.global_features
    if isinstance(output, dict) and "global_features" in output:
        return output["global_features"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find the global features in the encoder's output ({type(output).__name__}): "
                    "return a tensor, or an object with .global_features")


@torch.no_grad()
def extract_features(encoder: nn.Module, images, batch_size: int = 256, device=None) -> torch.Tensor:
    """Run a frozen ``encoder`` over ``images`` (N, C, H, W) and return its global features (N, D) on the CPU.

    The encoder runs in eval mode (no dropout, BatchNorm uses its running statistics) without
    gradients, ``batch_size`` images at a time; its previous train/eval mode is restored.
    ``device`` moves the encoder there (default: where its parameters already are).
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a tensor (N, C, H, W), got {type(images).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if device is not None:
        encoder.to(device)
    else:
        device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    was_training = encoder.training
    encoder.eval()
    try:
        chunks = []
        for i in range(0, len(images), batch_size):
            features = _global_features(encoder(images[i:i + batch_size].to(device)))
            chunks.append(features.float().cpu())
    finally:
        encoder.train(was_training)
    if not chunks:
        raise ValueError("images is empty: nothing to encode")
    return torch.cat(chunks)


__all__ = ["LinearProbe", "linear_probe", "extract_features"]
