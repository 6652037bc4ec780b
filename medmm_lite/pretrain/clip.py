"""CLIP / ConVIRT: learn one space for images and their reports.

Two towers (an image encoder and a text encoder) each end in a small projection
head into a shared ``embed_dim``-dimensional space. For a batch of N image-report
pairs the model computes the N x N matrix of scaled cosine similarities and asks,
row by row, "which report belongs to this image?" and, column by column, "which
image belongs to this report?" (``medmm_lite.objectives.clip_loss``). The other
N - 1 reports of the batch are the negatives: no labels are needed.

Two recipes, one model:

* **CLIP** (Radford et al. 2021): both directions weighted 0.5, a *learned*
  temperature (``logit_scale`` = 1/T, initialised at 1/0.07, clamped at 100).
* **ConVIRT** (Zhang et al. 2020), the medical ancestor of CLIP: image->text
  weighted 0.75, a *fixed* temperature 0.1, a two-layer MLP projection head, and
  random crops of the image during training.

Choices made here, and why:

* Projection heads are two-layer MLPs with a BatchNorm in the middle
  (``Linear -> BatchNorm1d -> ReLU -> Linear``) by default; ``projection="linear"``
  gives CLIP's single matrix. Two layers, as in ConVIRT, because SimCLR (Chen et al.
  2020, Sec. 4.2) showed that a non-linear head lets the encoder's own features keep
  information the contrastive loss throws away, and the linear probes and later
  lessons read those encoder features. The BatchNorm is what SimCLR's code and
  MoCo v3 (a contrastive ViT) put in their heads, and here it is not optional: every
  chest radiograph shows the same anatomy, so a freshly initialised ViT gives all
  images nearly the same feature vector (cosine ~0.998 between random images). A
  plain MLP passes that on, every image matches every report equally well, and the
  loss creeps down from log N for hundreds of steps. BatchNorm subtracts what the
  batch shares and scales up what differs, so image-report matching starts at once.
  The price: eval mode must use BatchNorm statistics of the *final* weights, so
  ``pretrain_clip`` recomputes them after training (``recalibrate_batchnorm``).
* Light augmentation of the images (``light_augment``: crops of 85-100% of the area,
  rotations of up to 5 degrees, window changes; no flips, which would swap the
  laterality the report states). ConVIRT uses crops too; ours are milder because
  small findings (a nodule, an apical pneumothorax) must stay in the picture for
  the report to remain true.
* **Negatives from the same hospital** (``negatives="same_site"``, the default):
  each batch is drawn from one site. SynthCXR, like real multi-site data, has
  shortcuts: each site's scanner has its own look and burned-in marker, and each
  site's radiologists their own wording. With random batches the cheapest way to
  match an image to its report is to recognise the hospital in both, and that is
  what a short run learns (lesson 02 measures it: most of an image's top-10 reports
  come from its own site). Within one site the hospital tells the pairs nothing,
  and only the findings can. ``negatives="random"`` is plain CLIP.
* **The impression as the text** (``text="impression"``, the default), as in
  CheXzero (Tiu et al. 2022): the radiologist's conclusion, a line or two that names
  what is present. The FINDINGS section adds a negation for most findings and most of
  each radiologist's style; from scratch, a text tower learns much faster from the
  impression, and it costs a third of the tokens. ``text="report"`` uses everything.
* The text's padding columns are trimmed per batch before the text tower runs:
  positions are a prefix and padding is masked out of attention, so the result is
  the same and short texts cost less.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import nn

from ..backbones import image_encoder, text_encoder
from ..data.augment import light_augment
from ..data.samplers import SameGroupBatches
from ..data.tensors import TensorDictDataset
from ..hub import data_fingerprint, load_or_train, profile_key
from ..models.features import feature_dim
from ..objectives.contrastive import CLIP_INIT_TEMPERATURE, CLIP_MAX_LOGIT_SCALE, LogitScale, distributed_clip_loss
from ..train import fit

PROJECTIONS = ("mlp", "linear")
TEXTS = ("impression", "report")
NEGATIVES = ("same_site", "random")


class ProjectionHead(nn.Module):
    """Features (B, in_dim) -> embeddings (B, out_dim).

    ``kind="mlp"``: Linear -> BatchNorm1d -> ReLU -> Linear (the default; see the module docstring).
    ``kind="linear"``: one bias-free Linear, CLIP's projection.
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "mlp", hidden_dim: int | None = None):
        super().__init__()
        if kind not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {kind!r}")
        self.kind = kind
        if kind == "linear":
            self.net = nn.Linear(in_dim, out_dim, bias=False)
        else:
            hidden_dim = hidden_dim or in_dim
            # no bias before BatchNorm: BN's own shift replaces it
            self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                                     nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, x):
        return self.net(x)


class CLIPModel(nn.Module):
    """An image tower and a text tower with projection heads into one ``embed_dim`` space.

    Args:
        image_encoder: returns ``ImageFeatures`` (``.global_features`` (B, dim)); e.g. ``backbones.image_encoder(P)``.
        text_encoder: returns ``TextFeatures`` (``.global_features`` (B, dim), the [CLS] output).
        embed_dim: width of the shared space.
        init_temperature: T at the start; ``logit_scale`` = 1/T (CLIP: 0.07).
        learn_temperature: learn T (CLIP) or keep it fixed (ConVIRT, and the temperature sweep).
        projection: ``"mlp"`` (two layers with a BatchNorm, the default) or ``"linear"`` (CLIP's).

    ``encode_image`` and ``encode_text`` return *un-normalised* projections; the loss
    (and every similarity) normalises them, so only their directions matter.
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, embed_dim: int,
                 init_temperature: float = CLIP_INIT_TEMPERATURE, learn_temperature: bool = True,
                 projection: str = "mlp"):
        super().__init__()
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
        if not (isinstance(init_temperature, (int, float)) and init_temperature >= 1 / CLIP_MAX_LOGIT_SCALE):
            raise ValueError(f"init_temperature must be a number >= {1 / CLIP_MAX_LOGIT_SCALE} (the logit scale is "
                             f"clamped at {CLIP_MAX_LOGIT_SCALE:g}), got {init_temperature!r}")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.embed_dim = embed_dim
        self.image_projection = ProjectionHead(feature_dim(image_encoder, "image"), embed_dim, projection)
        self.text_projection = ProjectionHead(feature_dim(text_encoder, "text"), embed_dim, projection)
        self.logit_scale = LogitScale(init_temperature, learnable=learn_temperature)

    @property
    def temperature(self) -> float:
        """The current T = 1 / logit_scale (after the clamp at 100, so never below 0.01)."""
        return self.logit_scale.temperature

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, embed_dim) projections (not normalised)."""
        return self.image_projection(self.image_encoder(images).global_features)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) token ids and mask (1 real, 0 padding) -> (B, embed_dim) projections (not normalised)."""
        same_shape = isinstance(attention_mask, torch.Tensor) and attention_mask.shape == getattr(input_ids, "shape", None)
        if same_shape and attention_mask.ndim == 2 and attention_mask.shape[1] > 1:
            # Drop the columns that are padding in every row (one host sync; the output is unchanged).
            # Mismatched shapes are left alone for the text encoder to report.
            longest = int(attention_mask.sum(1).max())
            if 0 < longest < attention_mask.shape[1]:
                input_ids, attention_mask = input_ids[:, :longest], attention_mask[:, :longest]
        return self.text_projection(self.text_encoder(input_ids, attention_mask).global_features)

    def forward(self, images, input_ids, attention_mask=None):
        """Both towers: ``(image_embeddings, text_embeddings)``, each (B, embed_dim)."""
        return self.encode_image(images), self.encode_text(input_ids, attention_mask)


def clip_step(model: CLIPModel, batch, image_to_text_weight: float = 0.5, augment=None, generator=None):
    """One training step's loss for ``fit``: ``(loss, {"temperature": T})``.

    ``batch`` is a dict with ``image`` (B, C, H, W), ``input_ids`` and ``attention_mask``
    (B, L), as ``TensorDictDataset(image=..., input_ids=..., attention_mask=...)`` yields.
    ``image_to_text_weight``: 0.5 is CLIP, 0.75 ConVIRT. ``augment(images, generator=...)``
    is applied to the images while the model trains (not in eval mode). Under DDP the loss
    scores this process's pairs against every process's (``distributed_clip_loss``).
    """
    missing = [k for k in ("image", "input_ids", "attention_mask") if k not in batch]
    if missing:
        raise KeyError(f"clip_step needs a batch with image, input_ids and attention_mask; {missing} missing. "
                       "Build the dataset as TensorDictDataset(image=..., input_ids=..., attention_mask=...)")
    images = batch["image"]
    if augment is not None and model.training:
        images = augment(images, generator=generator if images.device.type == "cpu" else None)
    image_emb, text_emb = model(images, batch["input_ids"], batch["attention_mask"])
    scale = model.logit_scale()
    loss = distributed_clip_loss(image_emb, text_emb, scale, image_to_text_weight)
    return loss, {"temperature": 1.0 / scale.detach()}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, *inputs: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Recompute a model's BatchNorm statistics for its final weights ("precise BN").

    ``model(*batch)`` is called on slices of ``inputs`` (for CLIP: images, input_ids,
    attention_mask; for SimCLR: images), with only the BatchNorm layers in train mode.

    Why: in eval mode a BatchNorm uses running averages collected *during* training, i.e.
    from earlier weights. Early in training the towers' features move faster than those
    averages follow, and because the images differ only a little (see the module
    docstring), a small lag is enough to swamp the differences: every image gets the same
    embedding in eval mode. Recomputing the statistics with the trained model, on the
    training data, fixes that (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm").
    Nothing else changes.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not inputs:
        raise ValueError("pass the model's inputs, e.g. recalibrate_batchnorm(model, images, input_ids, mask)")
    n = len(inputs[0])
    if any(len(x) != n for x in inputs):
        raise ValueError(f"all inputs must have the same length, got {[len(x) for x in inputs]}")
    if not norms:
        return model
    if n < 2:
        raise ValueError(f"recalibrating BatchNorm needs at least 2 samples, got {n}")
    was_training = model.training
    momentum = [m.momentum for m in norms]
    device = next(model.parameters()).device
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches below
        m.train()
    try:
        # full batches only, plus the remainder when it has 2 or more samples
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            if stop - start < 2:
                break
            model(*(x[start:stop].to(device) for x in inputs))
    finally:
        for m, value in zip(norms, momentum):
            m.momentum = value
        model.train(was_training)
    return model


# --------------------------------------------------------------------------- embedding whole sets
def _batched(fn, n: int, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(slice(i, i + batch_size)).float().cpu() for i in range(0, n, batch_size)])


@torch.no_grad()
def embed_images(model: CLIPModel, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Projections (N, embed_dim) of ``images``, in eval mode, on the CPU (not normalised)."""
    device = next(model.parameters()).device
    model.eval()
    return _batched(lambda s: model.encode_image(images[s].to(device)), len(images), batch_size)


@torch.no_grad()
def embed_reports(model: CLIPModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  batch_size: int = 256) -> torch.Tensor:
    """Projections (N, embed_dim) of encoded reports, in eval mode, on the CPU (not normalised)."""
    device = next(model.parameters()).device
    model.eval()
    return _batched(lambda s: model.encode_text(input_ids[s].to(device), attention_mask[s].to(device)),
                    len(input_ids), batch_size)


def text_embedder(model: CLIPModel, tokenizer, max_len: int | None = None):
    """A function ``list[str] -> (K, embed_dim)`` for ``adapt.prompt_embeddings``: tokenise, encode."""
    from ..data.tokenizer import encode_reports

    max_len = max_len or model.text_encoder.max_len

    def encode(texts):
        ids, mask = encode_reports(tokenizer, list(texts), max_len)
        return embed_reports(model, ids, mask)

    return encode


# --------------------------------------------------------------------------- what the model reads
def impression(report: str) -> str:
    """The IMPRESSION section of a report (the whole text when it has none)."""
    head, sep, tail = report.partition("IMPRESSION:")
    return tail.strip() if sep and tail.strip() else report.strip()


def encode_texts(data, text: str = "impression", max_len: int | None = None):
    """Token ids and mask (N, L) of every study's text: ``"impression"`` or the whole ``"report"``."""
    from ..data.tokenizer import encode_reports

    if text not in TEXTS:
        raise ValueError(f"text must be one of {TEXTS}, got {text!r}")
    if text == "report" and (max_len is None or max_len == data.input_ids.shape[1]):
        return data.input_ids, data.attention_mask
    max_len = max_len or data.input_ids.shape[1]
    texts = [impression(r) for r in data.cohort.reports] if text == "impression" else list(data.cohort.reports)
    return encode_reports(data.tokenizer, texts, max_len)


# --------------------------------------------------------------------------- cached pretraining
def build_clip(P, vocab_size: int, *, seed: int = 0, temperature: float | None = None, projection: str = "mlp",
               embed_dim: int | None = None) -> CLIPModel:
    """The course's CLIP model for profile ``P``: standard ViT and text towers, initialised from ``seed``
    (without touching the global random state). ``temperature=None`` learns T from 0.07; a float fixes it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(image_encoder(P), text_encoder(P, vocab_size), embed_dim or P.dim,
                         init_temperature=CLIP_INIT_TEMPERATURE if temperature is None else temperature,
                         learn_temperature=temperature is None, projection=projection)


def _check_weight_and_temperature(image_to_text_weight, temperature):
    if not (isinstance(image_to_text_weight, (int, float)) and 0 <= image_to_text_weight <= 1):
        raise ValueError(f"image_to_text_weight must be in [0, 1] (0.5 CLIP, 0.75 ConVIRT), got {image_to_text_weight!r}")
    if temperature is not None and not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
                                        and 1 / CLIP_MAX_LOGIT_SCALE <= temperature <= 100):
        raise ValueError(f"temperature must be None (learned, CLIP) or a fixed number in [0.01, 100] "
                         f"(ConVIRT: 0.1), got {temperature!r}")


def pretrain_clip(P, data, *, seed: int = 0, image_to_text_weight: float = 0.5, temperature: float | None = None,
                  steps: int | None = None, device=None, text: str = "impression", negatives: str = "same_site",
                  projection: str = "mlp", augment: bool = True, lr: float | None = None,
                  batch_size: int | None = None, progress: bool = True, retrain: bool = False):
    """Train (or load from the cache) a CLIP model on the training split's image-text pairs.

    Args:
        P: the profile (sizes, ``steps``, ``batch_size``, ``lr``, ``device``).
        data: ``medmm_lite.data.prepare_data(P, seed, dataset)``'s result.
        seed: model initialisation, batch order and augmentation.
        image_to_text_weight: 0.5 = CLIP, 0.75 = ConVIRT.
        temperature: None = learned from 0.07 (CLIP); a float = fixed (ConVIRT: 0.1).
        steps, lr, batch_size: default to the profile's.
        text: ``"impression"`` (default) or the whole ``"report"``; see the module docstring.
        negatives: ``"same_site"`` (default: each batch from one hospital) or ``"random"`` (plain CLIP).
        projection: ``"mlp"`` (default) or ``"linear"`` heads.
        augment: light crops and window changes on the images while training.

    Returns:
        ``(model, info)``: the model in eval mode on ``device``; ``info`` from ``load_or_train``
        (``info["history"]`` is the ``fit`` History, whose ``metrics["temperature"]`` is T per step).
        Embed texts for it with ``encode_texts(data, text)``.
    """
    _check_weight_and_temperature(image_to_text_weight, temperature)
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    steps = steps or P.steps
    lr = lr or P.lr
    batch_size = min(batch_size or P.batch_size, len(data.splits["train"]))
    device = device or P.device
    vocab_size = len(data.tokenizer)
    input_ids, attention_mask = encode_texts(data, text, P.max_text_len)
    train = torch.from_numpy(np.asarray(data.splits["train"], dtype=np.int64))
    tensors = dict(image=data.cohort.images[train], input_ids=input_ids[train], attention_mask=attention_mask[train])
    if negatives == "same_site":
        dataset = SameGroupBatches(np.asarray(data.cohort.site)[train.numpy()], **tensors)
    else:
        dataset = TensorDictDataset(**tensors)

    def build():
        return build_clip(P, vocab_size, seed=seed, temperature=temperature, projection=projection)

    def train_fn(model):
        generator = torch.Generator().manual_seed(seed + 1)
        step = partial(clip_step, image_to_text_weight=image_to_text_weight,
                       augment=light_augment if augment else None, generator=generator)
        label = "ConVIRT" if image_to_text_weight != 0.5 else "CLIP"
        desc = f"{label} T={'learned' if temperature is None else temperature}"
        history = fit(model, step, dataset, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                      amp=P.amp, progress=progress, desc=desc, rng=generator)
        # the clean training pairs, as evaluation will see them
        recalibrate_batchnorm(model, tensors["image"], tensors["input_ids"], tensors["attention_mask"])
        return history

    key = {**profile_key(P), "data": data_fingerprint(data), "vocab_size": vocab_size, "seed": seed,
           "image_to_text_weight": float(image_to_text_weight), "temperature": temperature, "steps": steps,
           "lr": float(lr), "batch_size": batch_size, "text": text, "negatives": negatives,
           "projection": projection, "augment": bool(augment)}
    model, info = load_or_train("clip", train_fn, build_fn=build, key=key, device=device, retrain=retrain)
    return model.eval(), info


__all__ = ["CLIPModel", "ProjectionHead", "clip_step", "recalibrate_batchnorm", "embed_images", "embed_reports", "text_embedder",
           "build_clip", "pretrain_clip", "data_fingerprint", "profile_key", "impression", "encode_texts",
           "SameGroupBatches", "PROJECTIONS", "TEXTS", "NEGATIVES"]
