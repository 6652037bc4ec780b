"""Fine-tuning a pretrained image encoder: what to train, with one function.

The review's adaptation taxonomy has four entries; three of them train something on
top of (or inside) a pretrained encoder, and differ only in *which parameters move*:

================  ==============================================================
``"probe"``       the encoder frozen, a linear head trained (a linear probe)
``"partial"``     the last ``blocks`` transformer blocks + the final norm + the head
``"lora"``        low-rank updates ``(alpha / rank) B A`` of the encoder's linear layers
                  (attention ``qkv``/``proj``, MLP ``fc1``/``fc2``) + the head
``"full"``        every parameter of the encoder + the head
================  ==============================================================

(The fourth, zero-shot prompting, trains nothing: :mod:`medmm_lite.adapt.zero_shot`.)

:func:`prepare` builds the :class:`~medmm_lite.adapt.protocol.Classifier` with exactly
those parameters set to ``requires_grad``; :func:`finetune` trains it with the course's
:func:`~medmm_lite.adapt.protocol.train_classifier` (so :func:`medmm_lite.train.fit`,
whose optimiser sees only the parameters that require gradients). Everything frozen
stays bit-identical, and frozen sub-modules are kept in eval mode while the rest trains
(a frozen BatchNorm keeps its statistics; the course's ViT has neither BatchNorm nor
dropout, so for it this changes nothing).

**Starting from the probe (LP-FT).** A freshly initialised head sends large, random
gradients into the pretrained features during the first steps and can distort them
before the head has learned anything (Kumar et al. 2022, "Fine-tuning can distort
pretrained features"). The usual cures are a lower learning rate for the backbone than
for the head, or *linear probing, then fine-tuning*: train the head on frozen features
first, then fine-tune from there at a lower rate. ``fit`` has one learning rate, so the
course uses the second: pass ``head=`` a trained :class:`~medmm_lite.adapt.probe.LinearProbe`
and the classifier's head becomes the probe itself (:func:`head_from_probe`): its non-affine
BatchNorm as a fixed :class:`Standardize`, then a trainable copy of its linear layer, so at
step 0 the classifier computes the probe's logits. (The capstone starts its fine-tuning from
the same heads.)
"""
from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..data.augment import light_augment
from ..data.findings import PATHOLOGIES
from ..hub import load_or_train
from ..models import count_parameters
from ..train import History
from .lora import LoRALinear, apply_lora, check_rank_alpha
from .probe import LinearProbe
from .protocol import Classifier, train_classifier

METHODS = ("probe", "partial", "lora", "full")
# The linear layers of the course's transformer blocks: attention (qkv, proj) and MLP (fc1, fc2).
LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")


class AdaptedClassifier(Classifier):
    """A :class:`Classifier` whose fully frozen sub-modules stay in eval mode while it trains."""

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for module in self.encoder.modules():
                params = list(module.parameters())
                if params and not any(p.requires_grad for p in params):
                    module.eval()
        return self


def _check_method(method) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


class Standardize(nn.Module):
    """A fixed standardisation of features, ``(x - mean) * inv_std``: a probe's BatchNorm in eval mode,
    kept frozen (buffers, not parameters) when the probe becomes a fine-tuned classifier's head."""

    def __init__(self, mean: torch.Tensor, inv_std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("inv_std", inv_std.detach().clone().float())

    def forward(self, x):
        return (x - self.mean) * self.inv_std


@torch.no_grad()
def head_from_probe(probe: LinearProbe, head: nn.Linear | None = None) -> nn.Sequential:
    """A trained linear probe as a classifier head: the one probe-to-head conversion of the library.

    The probe is ``BatchNorm1d(affine=False)`` then ``Linear``; the head is :class:`Standardize`
    (the BatchNorm's running mean and ``1 / sqrt(var + eps)``, fixed buffers) then a copy of the
    ``Linear`` (trainable), so ``head_from_probe(probe)(x)`` gives the probe's logits on features
    ``x``. The probe is not changed, and no random number is drawn.

    ``head``: the classifier's current head (an ``nn.Linear``), only to check that the probe
    has its shape (same features in, same labels out); the returned module replaces it (on its
    device): ``model.head = head_from_probe(probe, model.head)``.

    Why not fold the standardisation into the linear layer, ``(W / sigma) x + (b - (W / sigma) mu)``?
    It is the same map in exact arithmetic, but features that barely vary, as a fresh ViT's do,
    give weights of ``1 / sigma ~ 1e3`` and a bias that cancels them: float32 loses the probe's
    output (lesson 09 measures the gap). Keeping the two steps keeps the numbers.
    """
    if not isinstance(probe, LinearProbe):
        raise TypeError(f"head must be a LinearProbe (from linear_probe) or None, got {type(probe).__name__}")
    norm, linear = probe.model[0], probe.model[1]
    if head is not None and (linear.in_features, linear.out_features) != (head.in_features, head.out_features):
        raise ValueError(f"the probe maps {linear.in_features} -> {linear.out_features} but the classifier's head "
                         f"is {head.in_features} -> {head.out_features}: train the probe on this encoder's "
                         "features and the same label columns")
    inv_std = 1.0 / torch.sqrt(norm.running_var + norm.eps)
    trainable = copy.deepcopy(linear).cpu().float().requires_grad_(True)
    module = nn.Sequential(Standardize(norm.running_mean.cpu(), inv_std.cpu()), trainable)
    return module.to(head.weight.device) if head is not None else module


def prepare(encoder: nn.Module, method: str, *, num_classes: int = len(PATHOLOGIES), blocks: int = 1,
            rank: int = 4, alpha: float = 8.0, targets=LORA_TARGETS, head: LinearProbe | None = None,
            copy_encoder: bool = True) -> AdaptedClassifier:
    """The classifier for ``method``, with exactly the parameters that method trains left trainable.

    Args:
        encoder: the pretrained image encoder (returns ``.global_features``; has ``.dim``).
            ``"partial"`` also needs ``.blocks`` (a list of blocks) and ``.norm``, as the course's ViT has.
        method: ``"probe"``, ``"partial"``, ``"lora"`` or ``"full"`` (see the module docstring).
        blocks: for ``"partial"``, how many of the last blocks train (with the final norm).
        rank, alpha, targets: for ``"lora"`` (see :func:`~medmm_lite.adapt.apply_lora`).
        head: a trained :class:`LinearProbe` to start the head from (LP-FT); default a fresh head.
        copy_encoder: work on a deep copy, so the pretrained encoder is never changed (default).
    """
    _check_method(method)
    if method == "lora":
        check_rank_alpha(rank, alpha)
    encoder = copy.deepcopy(encoder) if copy_encoder else encoder
    if any(isinstance(m, LoRALinear) for m in encoder.modules()):
        raise ValueError("this encoder already holds LoRA layers: pass the pretrained encoder itself")
    model = AdaptedClassifier(encoder, num_classes)
    if head is not None:
        model.head = head_from_probe(head, model.head)
    if method == "probe":
        encoder.requires_grad_(False)
    elif method == "full":
        encoder.requires_grad_(True)
        if getattr(encoder, "pos_embed_kind", None) == "sincos":  # fixed positions stay fixed
            encoder.pos_embed.requires_grad_(False)
    elif method == "partial":
        layers, norm = getattr(encoder, "blocks", None), getattr(encoder, "norm", None)
        if not isinstance(layers, nn.ModuleList) or not isinstance(norm, nn.Module):
            raise ValueError("partial fine-tuning needs an encoder with .blocks (nn.ModuleList) and .norm, "
                             f"like the course's ViT; got {type(encoder).__name__}")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks <= len(layers):
            raise ValueError(f"blocks must be an int from 1 to {len(layers)} (the encoder's depth), got {blocks!r}")
        encoder.requires_grad_(False)
        for block in layers[len(layers) - blocks:]:
            block.requires_grad_(True)
        norm.requires_grad_(True)
    else:  # lora: apply_lora freezes everything else in the encoder
        apply_lora(encoder, rank, alpha, targets=list(targets) if targets is not None else None)
    model.head.requires_grad_(True)
    return model


@dataclass
class FineTuned:
    """The result of :func:`finetune`.

    Attributes:
        model: the trained classifier (eval mode); ``predict(model, images)`` scores images.
        method: which parameters trained.
        history: the ``fit`` History (``history.seconds``: wall time of the training).
        trainable, total: parameters trained, and in the whole classifier.
    """

    model: AdaptedClassifier
    method: str
    history: History
    trainable: int
    total: int

    @property
    def trainable_fraction(self) -> float:
        return self.trainable / self.total

    @property
    def seconds(self) -> float:
        return self.history.seconds


def finetune_steps(n_examples: int, batch_size: int, max_steps: int, epochs: int = 30, min_steps: int = 20) -> int:
    """Optimiser steps for ``n_examples``: ``epochs`` passes, at least ``min_steps``, at most ``max_steps``.

    A few dozen labelled images are seen ``epochs`` times in a handful of steps; more steps would
    only memorise them. The whole training set gets ``max_steps`` (the profile's budget).
    """
    per_epoch = max(1, n_examples // max(1, min(batch_size, n_examples)))
    return int(min(max_steps, max(min_steps, epochs * per_epoch)))


def _state_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def finetune(encoder: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, method: str, steps: int,
             batch_size: int, lr: float, head: LinearProbe | None = None, blocks: int = 1, rank: int = 4,
             alpha: float = 8.0, targets=LORA_TARGETS, weight_decay: float = 0.05, augment=light_augment,
             seed: int = 0, device=None, amp=None, progress: bool = True, cache_key: dict | None = None) -> FineTuned:
    """Adapt a pretrained ``encoder`` to multi-label ``labels`` with ``method``; the encoder is not changed.

    Args:
        encoder: the pretrained image encoder (deep-copied).
        images, labels: (N, C, H, W) training images and their (N, K) 0/1 labels.
        method: ``"probe"``, ``"partial"``, ``"lora"`` or ``"full"``.
        steps, batch_size, lr, weight_decay: for ``fit`` (AdamW, warmup, cosine); the batch is capped at N.
        head: a trained :class:`LinearProbe` on this encoder's features for these labels: the
            head starts from it (LP-FT; see the module docstring). Default: a fresh head.
        blocks: ``"partial"``: how many last blocks train. rank, alpha, targets: ``"lora"``.
        augment: applied to each training batch (default the light crops and window changes).
        seed: head initialisation, LoRA's ``A``, batch order and augmentation.
        cache_key: a JSON-able dict naming the encoder's origin and the data (profile, subset...):
            the trained model is then cached by ``load_or_train`` (the key also holds a digest of the
            encoder's weights, of the labels and every setting here), and a re-run loads it.

    Returns:
        a :class:`FineTuned` (``.model``, ``.history``, ``.trainable``, ``.total``, ``.seconds``).
    """
    _check_method(method)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    labels = torch.as_tensor(labels, dtype=torch.float32)
    if labels.ndim != 2 or len(labels) != len(images):
        raise ValueError(f"labels must be (N, K) with one row per image ({len(images)}), got {tuple(labels.shape)}")
    num_classes = labels.shape[1]

    def build():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return prepare(encoder, method, num_classes=num_classes, blocks=blocks, rank=rank, alpha=alpha,
                           targets=targets, head=head)

    def train(model):
        return train_classifier(model, images, labels, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                device=device, amp=amp, augment=augment, weight_decay=weight_decay,
                                progress=progress, desc=f"{method} fine-tuning ({len(images)} labels)")

    if cache_key is None:
        model = build()
        started = time.perf_counter()
        history = train(model)
        history.seconds = history.seconds or time.perf_counter() - started
    else:
        digest = hashlib.sha256(labels.numpy().tobytes())
        digest.update(images[:: max(1, len(images) // 64)].float().contiguous().numpy().tobytes())
        key = {**cache_key, "method": method, "steps": steps, "batch_size": batch_size, "lr": float(lr),
               "blocks": blocks, "rank": rank, "alpha": float(alpha), "targets": list(targets or []),
               "weight_decay": float(weight_decay), "augment": getattr(augment, "__name__", str(augment)),
               "seed": seed, "encoder": _state_digest(encoder), "data": digest.hexdigest()[:16], "n": len(images),
               "head": _state_digest(head.model) if head is not None else None}
        model, info = load_or_train("finetune", train, build_fn=build, key=key, device=device)
        history = info.get("history") or History()
    model.eval()
    trainable = count_parameters(model, trainable_only=True)
    return FineTuned(model, method, history, trainable, count_parameters(model))


__all__ = ["METHODS", "LORA_TARGETS", "AdaptedClassifier", "FineTuned", "prepare", "finetune", "finetune_steps",
           "head_from_probe", "Standardize"]
