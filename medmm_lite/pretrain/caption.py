"""Image -> report: an encoder-decoder captioning model (the review's *generative* family).

    image --CNN--> region features (B, N, local_dim) --Linear, + a position per region--> memory (B, N, dim)
    [BOS] w1 w2 ... --causal TextDecoder, cross-attending to the memory--> p(w_t | w_<t, image)

The model learns ``p(report | image) = prod_t p(w_t | w_1..w_{t-1}, image)`` by
**teacher forcing**: the true report, shifted right by one token, is fed in, and every
position is scored on the next true token (cross-entropy; padding targets set to -100 and
ignored). One forward pass scores a whole report, because the causal mask keeps position t
from seeing the tokens it must predict. At test time there is no true report: the decoder
writes one token at a time from its own output (``generate_reports``: greedy, sampling or
beam search, with a KV cache, :mod:`medmm_lite.models.generation`).

Choices made here, and why:

* **Lesson 02's CLIP ViT reads the image, frozen** (``encoder="clip"``), as LLaVA reads images
  with a CLIP ViT and most report generators start from a pretrained image encoder. Only the
  projection, the region positions and the decoder learn. Measured at the cpu profile's budget
  (``benchmarks/caption_encoders.py``; the table is in docs/performance.md): from scratch, the
  decoder learns the reports' language long before the encoder learns to see, and writes nearly
  one report for every patient; fine-tuning the CLIP ViT at the captioner's learning rate
  unlearns what CLIP taught it within the run; frozen, the encoder's features already separate
  the findings, and the decoder learns to read them.
* From scratch, the course's small **CNN** (``encoder="cnn"``, the default of ``build_caption``,
  as in R2Gen) is the stronger start: lesson 01 found its prior worth more than anything the
  ViT learns from a few thousand images. It is lesson 05's control. ``encoder="vit"`` is the
  ViT from scratch.
* **Cross-attention to the region features**, not one global vector: a report says where a
  finding is ("left lower lobe"), and each generated word can look at the regions it needs. A
  learned position per region is added, since a CNN's feature map has no positions of its own.
  A linear projection maps the encoder's width to the decoder's (``projection="none"`` feeds
  the features as they are). The CNN has no final Linear: its global feature, which a linear
  probe reads, is the mean of exactly the region features the decoder was trained to read.
* **The FINDINGS section as the text** (``text="findings"``, the default), as most
  report-generation work on IU X-ray and MIMIC-CXR does (R2Gen and its successors): it states
  every finding, present or absent, and the impression mostly repeats the present ones.
  ``text="report"`` (both sections) is a third longer, and 6-14% of the reports no longer fit
  the profile's ``max_text_len``; ``text="impression"`` is short and names only what is present.
* **A learning rate three times the profile's** (``CAPTION_LR_FACTOR``). Measured in the smoke
  profile: at the profile's rate the run ends with the validation loss still falling (1.01 nats
  per token, against 0.78 at three times the rate) and the model writes the same normal report
  for every image; at three times the rate the language is learned within the first half of the
  run and the second half learns to read the image.
* **Light augmentation** (crops of 85-100% of the area, rotations up to 5 degrees, window
  changes; never flips, which would swap the side the report states), because the training
  set is small and a decoder memorises reports fast.
* Padding columns are trimmed per batch: positions are a prefix and padding targets are
  ignored, so the loss is unchanged and short reports cost less. Batches are drawn from
  **length buckets** (reports of similar length, as machine translation batches sentences),
  so a batch is not padded to the one long report that happened to land in it: with a few
  buckets a step costs about half as much.
"""
from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import image_encoder, text_decoder
from ..data.augment import light_augment
from ..data.samplers import SameGroupBatches
from ..data.tensors import TensorDictDataset
from ..hub import data_fingerprint, load_or_train, profile_key
from ..models.frozen import FrozenEncoder
from ..models.generation import STRATEGIES, generate
from ..models.text import TextDecoder
from ..profiles import Profile
from ..train import fit
from .clip import pretrain_clip, recalibrate_batchnorm

TEXTS = ("findings", "report", "impression")
PROJECTIONS = ("linear", "none")
ENCODERS = ("cnn", "vit", "clip")
IGNORE_INDEX = -100
# The decoder learns fastest at a few times the profile's learning rate (measured: at the profile's
# rate, 300 smoke steps end while the language model is still converging, before any image use).
CAPTION_LR_FACTOR = 3.0


# --------------------------------------------------------------------------- what the model writes
def report_section(report: str, text: str = "findings") -> str:
    """The part of a ``"FINDINGS: ... IMPRESSION: ..."`` report that a model writes.

    ``"report"``: the whole text. ``"findings"``: the FINDINGS section without its header (the
    text before IMPRESSION when there is no header; the impression when a report has no findings,
    as some IU X-ray reports). ``"impression"``: the IMPRESSION section (the whole text without one).
    """
    if not isinstance(report, str):
        raise TypeError(f"report must be a string, got {type(report).__name__}")
    if text not in TEXTS:
        raise ValueError(f"text must be one of {TEXTS}, got {text!r}")
    if text == "report":
        return report.strip()
    head, sep, tail = report.partition("IMPRESSION:")
    impression = tail.strip() if sep and tail.strip() else ""
    if text == "impression":
        return impression or report.strip()
    findings = head.partition("FINDINGS:")[2] if "FINDINGS:" in head else head
    return findings.strip() or impression or report.strip()


def caption_texts(data, text: str = "findings") -> list[str]:
    """Every study's text to write (``report_section`` of each report of ``data.cohort``)."""
    return [report_section(r, text) for r in data.cohort.reports]


def encode_captions(data, text: str = "findings", max_len: int | None = None):
    """``[BOS] text [EOS]`` ids and mask (N, max_len) of every study (default ``max_len``: the
    width of ``data.input_ids``, the profile's ``max_text_len``)."""
    from ..data.tokenizer import encode_for_decoder

    return encode_for_decoder(data.tokenizer, caption_texts(data, text), max_len or int(data.input_ids.shape[1]))


# --------------------------------------------------------------------------- the model
class CaptionModel(nn.Module):
    """An image encoder whose region features are the cross-attention memory of a causal decoder.

    ``memory = projection(region features) + memory_pos``, one learned position per region.

    Args:
        image_encoder: returns ``ImageFeatures`` with ``.local_features`` (B, N, local_dim) and has an
            int ``local_dim`` and a fixed ``grid_size`` (the course's CNN or ViT).
        decoder: a :class:`~medmm_lite.models.TextDecoder` built with ``cross_attention=True``.
        projection: ``"linear"``: a Linear from ``local_dim`` to the decoder's ``context_dim``;
            ``"none"``: the features as they are (``local_dim`` must equal ``context_dim``).

    ``forward(images, input_ids)`` -> logits (B, L, vocab): position t scores token t+1.
    """

    def __init__(self, image_encoder: nn.Module, decoder: TextDecoder, projection: str = "linear"):
        super().__init__()
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        if not isinstance(decoder, TextDecoder) or not decoder.cross_attention:
            raise ValueError("decoder must be a medmm_lite.models.TextDecoder built with cross_attention=True "
                             "(e.g. backbones.text_decoder(P, vocab_size, cross_attention=True))")
        local_dim = getattr(image_encoder, "local_dim", None)
        if not isinstance(local_dim, int):
            raise ValueError(f"image_encoder must have an int attribute .local_dim (its region feature width), as "
                             f"the course's encoders do; got {type(image_encoder).__name__}")
        if projection == "none" and local_dim != decoder.context_dim:
            raise ValueError(f"projection='none' needs the encoder's local_dim ({local_dim}) to equal the "
                             f"decoder's context_dim ({decoder.context_dim}); use projection='linear'")
        self.image_encoder = image_encoder
        self.decoder = decoder
        self.projection_kind = projection
        grid = getattr(image_encoder, "grid_size", None)
        if not grid:
            raise ValueError("image_encoder must have a fixed .grid_size (h, w) of local regions; build the CNN "
                             "with image_size=... (backbones.image_encoder does)")
        self.projection = nn.Linear(local_dim, decoder.context_dim) if projection == "linear" else nn.Identity()
        # where each region is: a CNN's feature map carries no positions of its own, and the decoder must
        # know left from right; a ViT's tokens have positions already, and one more learned term is harmless
        self.memory_pos = nn.Parameter(torch.zeros(1, grid[0] * grid[1], decoder.context_dim))
        nn.init.trunc_normal_(self.memory_pos, std=0.02)

    @property
    def vocab_size(self) -> int:
        return self.decoder.vocab_size

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> the decoder's memory (B, N, context_dim): projected region features
        plus a learned position per region."""
        return self.projection(self.image_encoder(images).local_features) + self.memory_pos

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, memory: torch.Tensor | None = None):
        """Teacher-forced logits (B, L, vocab) for ``input_ids`` ([BOS] text [EOS], right-padded).

        Right padding needs no mask: the causal mask already hides every later position. Pass a
        precomputed ``memory`` to skip the image encoder."""
        if memory is None:
            memory = self.encode_image(images)
        return self.decoder(input_ids, context=memory).logits


def _check_batch(batch):
    missing = [k for k in ("image", "input_ids", "attention_mask") if k not in batch]
    if missing:
        raise KeyError(f"caption_step needs a batch with image, input_ids and attention_mask; {missing} missing. "
                       "Build the dataset as TensorDictDataset(image=..., input_ids=..., attention_mask=...) with "
                       "ids from encode_captions")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    tensors = isinstance(ids, torch.Tensor) and isinstance(mask, torch.Tensor)
    if not tensors or ids.ndim != 2 or ids.shape != mask.shape:
        raise ValueError(f"input_ids and attention_mask must be (B, L) tensors of one shape, got "
                         f"{tuple(getattr(ids, 'shape', ()))} and {tuple(getattr(mask, 'shape', ()))}")
    if len(batch["image"]) != len(ids):
        raise ValueError(f"the batch has {len(batch['image'])} images and {len(ids)} texts; they must pair up")


def shift_targets(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token targets (B, L-1): ``input_ids[:, 1:]`` with padding set to -100 (ignored by the loss)."""
    return input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, IGNORE_INDEX)


def caption_step(model: CaptionModel, batch: dict, augment=None, generator=None):
    """One teacher-forcing step for ``fit``: ``(loss, {"token_accuracy": ...})``.

    ``loss`` is the mean next-token cross-entropy over the real target tokens (the [BOS] is
    never a target; padding targets are -100). ``token_accuracy``: how often the most likely
    next token is the true one. ``augment(images, generator=...)`` runs only in training mode.
    """
    _check_batch(batch)
    images, ids, mask = batch["image"], batch["input_ids"], batch["attention_mask"]
    longest = int(mask.sum(1).max())
    if longest < 2:
        raise ValueError("every text in the batch is shorter than 2 tokens: there is no next token to predict "
                         "(encode texts with encode_captions: [BOS] text [EOS])")
    ids, mask = ids[:, :longest], mask[:, :longest]          # trim padding columns: the loss is unchanged
    if augment is not None and model.training:
        images = augment(images, generator=generator if images.device.type == "cpu" else None)
    logits = model(images, ids)[:, :-1]                      # position t predicts token t+1
    targets = shift_targets(ids, mask)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX)
    real = targets != IGNORE_INDEX
    accuracy = (logits.detach().argmax(-1) == targets)[real].float().mean()
    return loss, {"token_accuracy": accuracy}


@torch.no_grad()
def teacher_forced_sums(model, logits_fn, images, input_ids, attention_mask, batch_size: int = 256):
    """The summed teacher-forced cross-entropy over a whole set and its number of real target tokens,
    in eval mode. ``logits_fn(images, ids, mask) -> (B, L, V)``: the logits at every position of ``ids``
    (any captioner: lesson 05's, CoCa's decoder)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(images), batch_size):
            s = slice(start, start + batch_size)
            ids, mask = input_ids[s].to(device), attention_mask[s].to(device)
            longest = int(mask.sum(1).max())
            ids, mask = ids[:, :longest], mask[:, :longest]
            logits = logits_fn(images[s].to(device), ids, mask)[:, :-1].float()
            targets = shift_targets(ids, mask)
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                           ignore_index=IGNORE_INDEX, reduction="sum"))
            count += int((targets != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total, count


def caption_loss(model: CaptionModel, images, input_ids, attention_mask, batch_size: int = 256) -> float:
    """The teacher-forced loss per real target token over a whole set, in eval mode."""
    total, count = teacher_forced_sums(model, lambda im, ids, mask: model(im, ids), images, input_ids,
                                       attention_mask, batch_size)
    if count == 0:
        raise ValueError("no target tokens to score")
    return total / count


# --------------------------------------------------------------------------- building and training
def length_buckets(lengths, batch_size: int, max_buckets: int = 8) -> np.ndarray:
    """A bucket id per text: texts sorted by length and cut into equal groups, each holding at
    least ``batch_size`` texts (at most ``max_buckets`` groups). Ties keep their order."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or not len(lengths):
        raise ValueError(f"lengths must be a non-empty 1-D array, got shape {lengths.shape}")
    n_buckets = int(max(1, min(max_buckets, len(lengths) // max(1, batch_size))))
    order = np.argsort(lengths, kind="stable")
    buckets = np.empty(len(lengths), dtype=np.int64)
    buckets[order] = np.arange(len(lengths)) * n_buckets // len(lengths)
    return buckets


def build_caption(P: Profile, vocab_size: int, seed: int = 0, encoder: str = "cnn", projection: str = "linear",
                  max_len: int | None = None, pretrained: nn.Module | None = None) -> CaptionModel:
    """The course's captioning model for profile ``P``, initialised from ``seed`` without touching
    the global random state: an image encoder and a cross-attention ``TextDecoder`` of the
    profile's width and depth.

    ``encoder``: ``"cnn"`` (the default) or ``"vit"``, both from scratch, or ``"clip"``: a copy of
    ``pretrained`` (lesson 02's ``clip_model.image_encoder``), frozen (``FrozenEncoder``). See the
    module docstring. The CNN is built without its final Linear, so its global feature is the
    average of the region features the decoder reads (a linear probe then reads what captioning
    trained); the ViT is mean-pooled for the same reason."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 8:
        raise ValueError(f"vocab_size must be the tokenizer's size (len(tokenizer)), an int >= 8, got {vocab_size!r}")
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    if (encoder == "clip") != (pretrained is not None):
        raise ValueError("encoder='clip' starts from a pretrained image encoder: pass pretrained="
                         "clip_model.image_encoder (from pretrain_clip); the other encoders start from scratch "
                         "and take no pretrained module")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if encoder == "clip":
            images = FrozenEncoder(copy.deepcopy(pretrained))
        elif encoder == "cnn":
            images = image_encoder(P, kind="cnn", dim=None)
        else:
            images = image_encoder(P, pool="mean")
        context_dim = images.local_dim if projection == "none" else None
        decoder = text_decoder(P, vocab_size, cross_attention=True, context_dim=context_dim,
                               max_len=max_len or P.max_text_len)
        return CaptionModel(images, decoder, projection=projection)


def lesson02_clip(P: Profile, data, *, seed: int, device=None, progress: bool = True):
    """Lesson 02's CLIP (trained or loaded by ``pretrain_clip``) and the name of its cached checkpoint,
    which goes into the cache key of any model built on it (a retrained CLIP retrains that model)."""
    clip_model, info = pretrain_clip(P, data, seed=seed, device=device, progress=progress)
    return clip_model, Path(info["path"]).name if info.get("path") else "clip (not cached)"


def pretrain_caption(P: Profile, data, *, seed: int = 0, steps: int | None = None, text: str = "findings",
                     dataset: str = "synthcxr", device=None, progress: bool = True, encoder: str = "cnn",
                     lr: float | None = None, batch_size: int | None = None, projection: str = "linear",
                     augment: bool = True, eval_points: int = 10, buckets: int = 8, retrain: bool = False):
    """Train (or load from the cache) a captioning model on the training split's image-text pairs.

    Args:
        P: the profile (sizes, ``steps``, ``batch_size``, ``device``).
        data: ``medmm_lite.data.prepare_data(P, seed, dataset)``'s result.
        seed: initialisation, batch order and augmentation.
        steps, batch_size: default to the profile's.
        lr: default ``CAPTION_LR_FACTOR`` times the profile's (see the module docstring).
        text: ``"findings"`` (default), ``"report"`` or ``"impression"`` (see ``report_section``).
        dataset: the dataset's name, part of the cache key.
        encoder: ``"cnn"`` (default) or ``"vit"`` from scratch, or ``"clip"``: the image tower of
            ``pretrain_clip(P, data, seed=seed)`` (trained or loaded here), frozen.
        projection: ``"linear"`` or ``"none"``.
        augment: light crops, rotations and window changes while training (no flips).
        eval_points: how many times the validation loss is measured during training.
        buckets: batches come from this many length buckets at most (1: plain random batches).

    Returns:
        ``(model, info)``: the model in eval mode on ``device``; ``info`` from ``load_or_train``.
        ``info["history"]`` is the ``fit`` History (``metrics["token_accuracy"]`` per step,
        ``evals`` with ``val_loss``). A CNN's BatchNorm statistics are recomputed for the final
        weights on the training images (``clip.recalibrate_batchnorm``); a frozen encoder keeps its own.
    """
    if text not in TEXTS:
        raise ValueError(f"text must be one of {TEXTS}, got {text!r}")
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    steps = steps or P.steps
    lr = lr or CAPTION_LR_FACTOR * P.lr
    batch_size = min(batch_size or P.batch_size, len(data.splits["train"]))
    device = device or P.device
    vocab_size = len(data.tokenizer)
    max_len = int(data.input_ids.shape[1])
    ids, mask = encode_captions(data, text, max_len)
    train = torch.as_tensor(np.asarray(data.splits["train"]), dtype=torch.long)
    val = torch.as_tensor(np.asarray(data.splits["val"]), dtype=torch.long)
    tensors = dict(image=data.cohort.images[train], input_ids=ids[train], attention_mask=mask[train])
    if buckets > 1:   # each batch from one length bucket (see the module docstring)
        dataset_ = SameGroupBatches(length_buckets(mask[train].sum(1).numpy(), batch_size, buckets), **tensors)
    else:
        dataset_ = TensorDictDataset(**tensors)

    pretrained, encoder_key = None, None
    if encoder == "clip":
        clip_model, encoder_key = lesson02_clip(P, data, seed=seed, device=device, progress=progress)
        pretrained = clip_model.image_encoder

    def build():
        return build_caption(P, vocab_size, seed=seed, encoder=encoder, projection=projection, max_len=max_len,
                             pretrained=pretrained)

    def val_loss(model):
        return {"val_loss": caption_loss(model, data.cohort.images[val], ids[val], mask[val])}

    def train_fn(model):
        generator = torch.Generator().manual_seed(seed + 1)
        step = partial(caption_step, augment=light_augment if augment else None, generator=generator)
        history = fit(model, step, dataset_, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                      amp=P.amp, progress=progress, desc=f"captioning ({encoder}, {text})",
                      eval_fn=val_loss if len(val) else None, eval_every=max(1, steps // max(1, eval_points)),
                      rng=generator)
        if not isinstance(model.image_encoder, FrozenEncoder):
            recalibrate_batchnorm(model.image_encoder, tensors["image"])   # the final weights' statistics
        return history

    key = {**profile_key(P), "data": data_fingerprint(data), "dataset": dataset, "vocab_size": vocab_size,
           "seed": seed, "steps": steps, "lr": float(lr), "batch_size": batch_size, "text": text,
           "encoder": encoder, "pretrained": encoder_key, "projection": projection, "augment": bool(augment), "eval_points": eval_points,
           "buckets": buckets}
    model, info = load_or_train("caption", train_fn, build_fn=build, key=key, device=device, retrain=retrain)
    return model.eval(), info


# --------------------------------------------------------------------------- writing reports
@torch.no_grad()
def generate_reports(model: CaptionModel, images: torch.Tensor, tokenizer, strategy: str = "greedy", *,
                     max_new_tokens: int | None = None, seed: int = 0, temperature: float = 1.0,
                     top_k: int | None = None, top_p: float | None = None, num_beams: int = 4,
                     length_penalty: float = 1.0, batch_size: int = 256, return_ids: bool = False):
    """Write a report for each image: ``"greedy"``, ``"sample"`` or ``"beam"`` decoding.

    Args:
        model: a :class:`CaptionModel` (put in eval mode here).
        images: (N, C, H, W).
        tokenizer: the tokenizer the model was trained with (its [BOS]/[EOS]/[PAD] ids).
        strategy: greedy (the most likely token at each step), sample (draw from the softmax,
            reshaped by ``temperature``, ``top_k``, ``top_p``), or beam (keep the ``num_beams``
            most likely partial reports; ``length_penalty`` as in :func:`~medmm_lite.models.generation.generate`).
        max_new_tokens: default the decoder's context minus the start token.
        seed: seeds sampling (a generator on the model's device), so the same call repeats exactly.
        batch_size: images decoded at once.
        return_ids: also return the token ids (a list of 1-D tensors, [EOS] and padding removed).

    Returns:
        a list of N strings (lower case, as the tokenizer normalises text); with ``return_ids``,
        ``(texts, ids)``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (N, C, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if len(tokenizer) > model.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, the model's vocabulary {model.vocab_size}: "
                         "pass the tokenizer the model was trained with")
    device = next(model.parameters()).device
    model.eval()
    max_new_tokens = max_new_tokens or model.decoder.max_len - 1
    options = {}
    generator = None
    if strategy == "sample":
        generator = torch.Generator(device=device).manual_seed(seed)
        options = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    elif temperature != 1.0 or top_k is not None or top_p is not None:
        raise ValueError(f"temperature, top_k and top_p only apply to strategy='sample', not {strategy!r}")
    if strategy == "beam":
        options = dict(num_beams=num_beams, length_penalty=length_penalty)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    texts, all_ids = [], []
    for start in range(0, len(images), batch_size):
        memory = model.encode_image(images[start:start + batch_size].to(device))
        out = generate(model.decoder, memory, bos_id=tokenizer.bos_token_id, eos_id=eos, pad_id=pad,
                       max_new_tokens=max_new_tokens, strategy=strategy, **options).cpu()
        for row in out:
            keep = row[(row != pad) & (row != eos)]
            all_ids.append(keep)
            texts.append(tokenizer.decode(keep, skip_special_tokens=True))
    return (texts, all_ids) if return_ids else texts


__all__ = ["CaptionModel", "caption_step", "caption_loss", "teacher_forced_sums", "shift_targets", "build_caption", "pretrain_caption",
           "generate_reports", "length_buckets", "report_section", "caption_texts", "encode_captions", "TEXTS",
           "PROJECTIONS", "ENCODERS", "IGNORE_INDEX", "CAPTION_LR_FACTOR"]
