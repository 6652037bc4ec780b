"""CoCa (Contrastive Captioners, Yu et al. 2022): contrastive + captioning in one model.

    image --ViT--> [CLS] --MLP head--> image embedding ----------------.
                   [CLS] + patch tokens (the memory) ------.            |  clip_loss (weight 1)
    [BOS] w1 .. [EOS] [CLS_text] --unimodal causal blocks--+--> text embedding (the [CLS_text] output)
                                     token outputs --multimodal blocks (self + cross-attention)--> next-token logits
                                                                            captioning loss (weight 2)

One image encoder and one text decoder serve both of the review's families at once. The
decoder is cut in two: its lower, **unimodal** blocks are a causal language model that never
sees the image; a learned [CLS_text] token appended at the *end* of the text attends to every
real token before it, and its output (projected) is the report's contrastive embedding. The
upper, **multimodal** blocks read the unimodal token outputs, cross-attend to the image's
patch tokens and predict the next token. The loss is

    L = contrastive_weight * clip_loss(image, text) + caption_weight * captioning loss,

1 and 2 in the paper (and in open_clip's ``--coca-contrastive-loss-weight`` /
``--coca-caption-loss-weight`` defaults). Both terms come out of one forward pass: the text
runs through the unimodal blocks once (with the [CLS_text] appended), the image once.

Choices made here, and why (compared with open_clip's ``coca_model.py`` and lucidrains'
``CoCa-pytorch``):

* **Kept: the text [CLS] at the END of the causal sequence** (open_clip's ``embed_cls``,
  lucidrains' ``text_cls_token``). Only the last position of a causal sequence sees the whole
  text; no token sees the [CLS], so the captioning path is untouched by it. The [CLS] may attend
  only to real tokens and itself (open_clip's ``build_cls_mask``): the texts are right-padded
  and the [CLS] sits after the padding. It gets no position embedding: it is always last, and
  padding columns are trimmed per batch, so "last" has no fixed index.
* **Kept: the paper's split of one decoder in half** (``default_depths``): the profile's
  ``depth`` blocks in all, ``depth // 2`` unimodal and the rest multimodal (1 + 1 in the smoke
  profile, 1 + 2 in the cpu profile), so CoCa's text side costs what lesson 05's decoder costs.
  open_clip instead stacks a full text tower and a full multimodal decoder (12 + 12 layers in
  ``coca_ViT-B-32``): measured here, that doubles the text side's cost per step, which the
  course's budgets cannot pay for three models. ``unimodal_depth`` / ``multimodal_depth`` choose.
* **Kept: tied embeddings** (lucidrains ties the output projection to the token embedding, as
  the course's ``TextDecoder`` and GPT-2 do; open_clip keeps a separate output matrix).
* **Not kept: the attentional poolers.** CoCa pools the ViT's tokens with learned queries: one
  query for the contrastive embedding, 256 for the decoder's memory, both over all of the ViT's
  output tokens. Here the image has 16 (smoke) or 64 (cpu) patches: there is nothing to
  compress, so the decoder reads the ViT's output tokens themselves, its global feature (the
  mean of its patch outputs, the profile's ``vit_pool``) and its patches (after the ViT's final
  LayerNorm, with its learned positions), and the contrastive embedding is that global feature
  through lesson 02's two-layer projection head with a BatchNorm (``clip.ProjectionHead``, whose
  reasons are in ``clip``'s docstring). The contrastive half is therefore exactly lesson 02's
  CLIP except for the text tower; and the global feature, which the contrastive loss trains to
  summarise the findings, is one of the tokens the captioner reads.
* **The IMPRESSION is the text for both losses** (``text="impression"``, lesson 02's choice for
  CLIP, after CheXzero): the contrastive tower and the captioner read the same tokens, which is
  what "one model" means. The impression names what is present in a line or two (median 10
  tokens against 31 for the FINDINGS section, which lesson 05's captioner writes): a third of
  the tokens makes a step of the text side 1.5 times cheaper (measured at the cpu profile's
  sizes), which three models on a laptop's budget need; a text tower learns faster from it
  (lesson 02); and a captioner that writes it must say *which* findings the image has rather
  than list every absent one. ``text="findings"`` or ``"report"`` choose otherwise. Batches come
  from one hospital (``negatives="same_site"``, lesson 02's reason: otherwise the contrastive
  half learns to recognise the hospital).
* **One learning rate for every arm: the profile's** (lesson 02's CLIP rate). Lesson 05's
  captioner trains at three times it (``CAPTION_LR_FACTOR``), and in the smoke profile that
  helps CoCa too (impressions, 300 steps, seed 0: test captioning loss 1.35 at the profile's
  rate vs 1.00 at three times it). But in the cpu profile the contrastive-only model at three
  times the rate never leaves chance in 600 steps (training loss 4.80 -> 4.16 = ln 64, the
  batch's chance level), while at the profile's rate it does (4.45 -> 3.81, after a plateau of
  about 350 steps; lesson 02's CLIP shows the same plateau). One rate for every arm must not
  break one of them, so the profile's rate it is; the captioning arms pay for it with a slower
  start.
* **The image tower may start from lesson 02's CLIP** (``image_init="clip"``: its ViT and image
  projection head copied, then trained with the rest), as the paper's CoCa and most captioners
  start from a pretrained encoder. From scratch at the cpu budget (``image_init="scratch"``), the
  captioning term learns the reports' language long before the image and writes one impression
  for every study (lesson 08 keeps that run as its control).
* The ablations are the same model with one weight set to 0 (the paper's Table 8a):
  ``caption_weight=0`` is contrastive-only (the multimodal blocks are frozen and never run),
  ``contrastive_weight=0`` captioning-only (the [CLS], heads and temperature frozen and never
  run). Everything else (backbone, text, batches, steps, learning rate, seed) is identical.
"""
from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import image_encoder
from ..data.augment import light_augment
from ..data.samplers import SameGroupBatches
from ..data.tensors import TensorDictDataset
from ..hub import data_fingerprint, load_or_train, profile_key
from ..models.attention import Block, init_transformer_weights
from ..models.text import DecoderOutput, TextDecoder, check_mask, check_token_ids
from ..objectives.contrastive import CLIP_INIT_TEMPERATURE, LogitScale, clip_loss, distributed_clip_loss
from ..train import fit
from .caption import IGNORE_INDEX, encode_captions, lesson02_clip, shift_targets, teacher_forced_sums
from .caption import generate_reports as caption_generate_reports
from .clip import PROJECTIONS, ProjectionHead, embed_reports, recalibrate_batchnorm

TEXTS = ("findings", "report", "impression")
NEGATIVES = ("same_site", "random")
CONTRASTIVE_WEIGHT = 1.0   # the paper's lambda_Con
CAPTION_WEIGHT = 2.0       # the paper's lambda_Cap


class CoCaDecoder(nn.Module):
    """CoCa's text side: unimodal causal blocks, then multimodal blocks with cross-attention.

    Args:
        vocab_size, dim, heads, max_len: as for :class:`~medmm_lite.models.TextDecoder`.
        unimodal_depth: causal self-attention blocks that never see the image (the text tower).
        multimodal_depth: blocks with self- and cross-attention to a ``context`` (the image tokens).
        context_dim: the context's width (default ``dim``).
        tie_weights: the output head shares the token embedding.

    Two ways in:

    * ``encode_text(input_ids, attention_mask)`` -> ``(cls (B, dim), tokens (B, L, dim))``: the
      unimodal stack over the text with a learned [CLS] appended after the last column; ``cls``
      is its final-normed output, ``tokens`` the unimodal outputs of the text positions.
    * ``forward(input_ids, context=..., ...)`` -> :class:`~medmm_lite.models.text.DecoderOutput`:
      the captioning path without the [CLS] (both stacks), with the same arguments and KV cache as
      ``TextDecoder.forward``, so :func:`medmm_lite.models.generation.generate` decodes with it.
      ``multimodal(tokens, context)`` runs only the upper stack on ``encode_text``'s tokens.
    """

    def __init__(self, vocab_size: int, dim: int, heads: int, max_len: int, unimodal_depth: int,
                 multimodal_depth: int, context_dim: int | None = None, pad_id: int = 0, tie_weights: bool = True,
                 mlp_ratio: float = 4.0):
        super().__init__()
        for name, value in (("unimodal_depth", unimodal_depth), ("multimodal_depth", multimodal_depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id={pad_id} must be a token id in [0, vocab_size={vocab_size})")
        self.vocab_size, self.dim, self.max_len, self.pad_id = vocab_size, dim, max_len, pad_id
        self.cross_attention = True                       # what generate() and the context checks read
        self.context_dim = context_dim or dim
        self.depth = unimodal_depth + multimodal_depth
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(max_len, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.unimodal = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(unimodal_depth)])
        self.cls_norm = nn.LayerNorm(dim, eps=1e-6)       # open_clip's ln_final on the pooled [CLS]
        self.multimodal = nn.ModuleList([Block(dim, heads, mlp_ratio, cross_attention=True, context_dim=context_dim)
                                         for _ in range(multimodal_depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.apply(init_transformer_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for name, param in self.named_parameters():       # GPT-2's scaled residual projections
            if name.endswith(("attn.proj.weight", "mlp.fc2.weight")):
                nn.init.trunc_normal_(param, std=0.02 / math.sqrt(2 * self.depth))
        if tie_weights:
            self.lm_head.weight = self.token_embed.weight

    @property
    def blocks(self) -> list[nn.Module]:
        """Every block, unimodal first (one KV-cache entry each)."""
        return [*self.unimodal, *self.multimodal]

    def _embed(self, input_ids, past_len: int = 0):
        positions = torch.arange(past_len, past_len + input_ids.shape[1], device=input_ids.device)
        return self.token_embed(input_ids) + self.pos_embed(positions)

    # -- the contrastive text tower ---------------------------------------------
    def encode_text(self, input_ids, attention_mask=None):
        """Unimodal stack with the [CLS] appended: ``(cls (B, dim), tokens (B, L, dim))``.

        The [CLS] attends to the real tokens (``attention_mask`` 1, default ``input_ids != pad_id``)
        and itself; each token attends causally to the tokens before it, never to the [CLS].
        """
        check_token_ids(input_ids, "CoCaDecoder", self.vocab_size, self.max_len)
        B, L = input_ids.shape
        real = (input_ids != self.pad_id) if attention_mask is None else check_mask(
            attention_mask, (B, L), "CoCaDecoder", "attention_mask")
        x = torch.cat([self._embed(input_ids), self.cls_token.expand(B, -1, -1).to(self.token_embed.weight.dtype)], 1)
        keys = torch.cat([real, real.new_ones(B, 1)], dim=1)                         # the [CLS] is real
        position = torch.arange(L + 1, device=input_ids.device)
        causal = position[None, :] <= position[:, None]                              # (L+1, L+1)
        # a padded query that sees no real key would give NaN: let every query see itself
        mask = ((causal[None] & keys[:, None, :]) | torch.eye(L + 1, dtype=torch.bool, device=x.device))[:, None]
        for block in self.unimodal:
            x = block(x, attn_mask=mask)
        return self.cls_norm(x[:, -1]), x[:, :-1]

    def multimodal_logits(self, tokens, context, context_mask=None):
        """The upper stack on unimodal token outputs (B, L, dim) -> next-token logits (B, L, vocab).
        Right padding needs no mask: the causal mask hides every later position."""
        TextDecoder._check_context(self, context, context_mask, tokens.shape[0], cached=False)
        x = tokens
        for block in self.multimodal:
            x = block(x, is_causal=tokens.shape[1] > 1, context=context, context_mask=context_mask)
        return self.lm_head(self.norm(x))

    # -- the captioning path (TextDecoder's interface, for generate) -------------
    def forward(self, input_ids, context=None, context_mask=None, attention_mask=None,
                past_key_values=None, use_cache: bool = False, prefix_embeds=None) -> DecoderOutput:
        if prefix_embeds is not None:
            raise ValueError("CoCaDecoder reads the image through cross-attention (context), not prefix_embeds")
        blocks = self.blocks
        past_len = past_key_values[0].key.shape[2] if past_key_values else 0
        check_token_ids(input_ids, "CoCaDecoder", self.vocab_size, self.max_len, past_len)
        B, T = input_ids.shape
        if past_key_values is not None and len(past_key_values) != len(blocks):
            raise ValueError(f"past_key_values has {len(past_key_values)} layers, the decoder {len(blocks)}")
        TextDecoder._check_context(self, context, context_mask, B, cached=past_len > 0)
        x = self._embed(input_ids, past_len)
        attn_mask, is_causal = TextDecoder._self_attention_mask(self, B, T, past_len, attention_mask, x.device)
        presents = []
        for i, block in enumerate(blocks):
            past = past_key_values[i] if past_key_values is not None else None
            multimodal = i >= len(self.unimodal)
            out = block(x, attn_mask=attn_mask, is_causal=is_causal, context=context if multimodal else None,
                        context_mask=context_mask if multimodal else None, past=past, use_cache=use_cache)
            if use_cache:
                x, present = out
                presents.append(present)
            else:
                x = out
        hidden = self.norm(x)
        return DecoderOutput(self.lm_head(hidden), tuple(presents) if use_cache else None, hidden)


class CoCaOutput(NamedTuple):
    """``image_embeddings`` / ``text_embeddings`` (B, embed_dim), not normalised (None when the
    contrastive half did not run); ``logits`` (B, L, vocab), position t scoring token t+1 (None
    when the captioning half did not run)."""

    image_embeddings: torch.Tensor | None
    text_embeddings: torch.Tensor | None
    logits: torch.Tensor | None


class CoCaModel(nn.Module):
    """A shared image encoder, projection heads, a learned temperature and a :class:`CoCaDecoder`.

    Args:
        image_encoder: returns ``ImageFeatures``; global (B, dim) and local (B, N, local_dim), e.g.
            ``backbones.image_encoder(P)`` (a ViT with [CLS] pooling).
        decoder: a :class:`CoCaDecoder` whose ``context_dim`` is the encoder's ``local_dim``.
        embed_dim: the contrastive space's width.
        init_temperature: T at the start (CLIP: 0.07), learned.
        projection: ``"mlp"`` (lesson 02's heads, the default) or ``"linear"``.

    ``encode_image`` / ``encode_text`` give the contrastive projections (the names lesson 02's
    ``clip.embed_images`` / ``clip.embed_reports`` call); ``image_memory`` the decoder's context.
    """

    def __init__(self, image_encoder: nn.Module, decoder: CoCaDecoder, embed_dim: int,
                 init_temperature: float = CLIP_INIT_TEMPERATURE, projection: str = "mlp"):
        super().__init__()
        if not isinstance(decoder, CoCaDecoder):
            raise ValueError(f"decoder must be a CoCaDecoder, got {type(decoder).__name__}")
        if getattr(image_encoder, "local_dim", None) != decoder.context_dim:
            raise ValueError(f"the image encoder's local_dim ({getattr(image_encoder, 'local_dim', None)}) must equal "
                             f"the decoder's context_dim ({decoder.context_dim})")
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
        self.image_encoder = image_encoder
        self.decoder = decoder
        self.embed_dim = embed_dim
        self.image_projection = ProjectionHead(image_encoder.dim, embed_dim, projection)
        self.text_projection = ProjectionHead(decoder.dim, embed_dim, projection)
        self.logit_scale = LogitScale(init_temperature, learnable=True)

    @property
    def vocab_size(self) -> int:
        return self.decoder.vocab_size

    @property
    def text_encoder(self) -> CoCaDecoder:
        """The text side (``max_len`` for text embedders)."""
        return self.decoder

    @property
    def temperature(self) -> float:
        return self.logit_scale.temperature

    @staticmethod
    def memory_of(features) -> torch.Tensor:
        """``ImageFeatures`` -> the decoder's memory (B, 1 + N, dim): the global token, then the patch tokens."""
        return torch.cat([features.global_features[:, None], features.local_features], dim=1)

    def image_memory(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> what the multimodal blocks cross-attend to: the ViT's global and patch outputs,
        (B, 1 + N, dim)."""
        return self.memory_of(self.image_encoder(images))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> contrastive projections (B, embed_dim), not normalised."""
        return self.image_projection(self.image_encoder(images).global_features)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """([BOS] text [EOS] ids, mask) (B, L) -> contrastive projections (B, embed_dim) of the text [CLS]."""
        input_ids, attention_mask = _trim(input_ids, attention_mask)
        return self.text_projection(self.decoder.encode_text(input_ids, attention_mask)[0])

    def forward(self, images, input_ids, attention_mask=None, contrastive: bool = True,
                caption: bool = True) -> CoCaOutput:
        """Both halves in one pass (the image and the unimodal stack run once); either may be skipped."""
        if not (contrastive or caption):
            raise ValueError("nothing to compute: contrastive and caption are both False")
        features = self.image_encoder(images)
        image_emb = text_emb = logits = None
        if contrastive:
            cls, tokens = self.decoder.encode_text(input_ids, attention_mask)
            image_emb = self.image_projection(features.global_features)
            text_emb = self.text_projection(cls)
        if caption:
            if not contrastive:   # captioning alone: the unimodal stack without the [CLS] (SDPA's causal path)
                x = self.decoder._embed(input_ids)
                for block in self.decoder.unimodal:
                    x = block(x, is_causal=x.shape[1] > 1)
                tokens = x
            logits = self.decoder.multimodal_logits(tokens, self.memory_of(features))
        return CoCaOutput(image_emb, text_emb, logits)


def _trim(input_ids, attention_mask):
    """Drop the columns that are padding in every row (the outputs at real positions are unchanged)."""
    if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2 and attention_mask.shape[1] > 1 \
            and isinstance(input_ids, torch.Tensor) and attention_mask.shape == input_ids.shape:
        longest = int(attention_mask.sum(1).max())
        if 0 < longest < attention_mask.shape[1]:
            return input_ids[:, :longest], attention_mask[:, :longest]
    return input_ids, attention_mask


def caption_term(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over real targets: logits[:, t] scores input_ids[:, t+1]; padding ignored."""
    targets = shift_targets(input_ids, attention_mask)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def coca_loss(model: CoCaModel, images, input_ids, attention_mask, contrastive_weight: float = CONTRASTIVE_WEIGHT,
              caption_weight: float = CAPTION_WEIGHT):
    """``(total, parts)``: total = contrastive_weight * clip loss + caption_weight * captioning loss;
    ``parts`` holds the unweighted terms that ran (``"contrastive"``, ``"caption"``) and, for logging,
    ``"token_accuracy"``. A term with weight 0 is not computed."""
    _check_weights(contrastive_weight, caption_weight)
    input_ids, attention_mask = _trim(input_ids, attention_mask)
    out = model(images, input_ids, attention_mask, contrastive=contrastive_weight > 0, caption=caption_weight > 0)
    total, parts = 0.0, {}
    if contrastive_weight > 0:
        parts["contrastive"] = distributed_clip_loss(out.image_embeddings, out.text_embeddings, model.logit_scale())
        total = total + contrastive_weight * parts["contrastive"]
    if caption_weight > 0:
        parts["caption"] = caption_term(out.logits, input_ids, attention_mask)
        total = total + caption_weight * parts["caption"]
        targets = shift_targets(input_ids, attention_mask)
        real = targets != IGNORE_INDEX
        parts["token_accuracy"] = (out.logits[:, :-1].detach().argmax(-1) == targets)[real].float().mean()
    return total, parts


def coca_step(model: CoCaModel, batch, contrastive_weight: float = CONTRASTIVE_WEIGHT,
              caption_weight: float = CAPTION_WEIGHT, augment=None, generator=None):
    """One training step's loss for ``fit``: ``(loss, {"contrastive_loss", "caption_loss", "token_accuracy",
    "temperature"})`` (only the terms that ran). ``batch``: ``image``, ``input_ids``, ``attention_mask`` with
    ``[BOS] text [EOS]`` ids (``caption.encode_captions``). ``augment(images, generator=...)`` in training mode."""
    missing = [k for k in ("image", "input_ids", "attention_mask") if k not in batch]
    if missing:
        raise KeyError(f"coca_step needs a batch with image, input_ids and attention_mask; {missing} missing. "
                       "Build it as TensorDictDataset(image=..., input_ids=..., attention_mask=...) with ids from "
                       "caption.encode_captions")
    images = batch["image"]
    if augment is not None and model.training:
        images = augment(images, generator=generator if images.device.type == "cpu" else None)
    loss, parts = coca_loss(model, images, batch["input_ids"], batch["attention_mask"], contrastive_weight,
                            caption_weight)
    logs = {f"{k}_loss" if k in ("contrastive", "caption") else k: v.detach() for k, v in parts.items()}
    if contrastive_weight > 0:
        logs["temperature"] = 1.0 / model.logit_scale().detach()
    return loss, logs


def _check_weights(contrastive_weight, caption_weight):
    for name, w in (("contrastive_weight", contrastive_weight), ("caption_weight", caption_weight)):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{name} must be a number >= 0 (CoCa: 1 and 2), got {w!r}")
    if contrastive_weight == 0 and caption_weight == 0:
        raise ValueError("contrastive_weight and caption_weight are both 0: nothing to train")


# --------------------------------------------------------------------------- whole sets
def caption_nll(model: CoCaModel, images, input_ids, attention_mask, batch_size: int = 256) -> float:
    """The teacher-forced captioning loss per real target token over a whole set, in eval mode."""
    total, count = teacher_forced_sums(model, lambda im, ids, mask: model(im, ids, mask, contrastive=False).logits,
                                       images, input_ids, attention_mask, batch_size)
    return total / max(count, 1)


class CaptionView(nn.Module):
    """A CoCa model seen as lesson 05's captioner: ``encode_image`` gives the decoder's memory, so
    ``caption.generate_reports(CaptionView(model), images, tokenizer, "beam")`` writes reports."""

    def __init__(self, model: CoCaModel):
        super().__init__()
        self.model = model

    @property
    def decoder(self) -> CoCaDecoder:
        return self.model.decoder

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    def encode_image(self, images):
        return self.model.image_memory(images)

    def forward(self, images, input_ids, memory=None):
        if memory is None:
            memory = self.encode_image(images)
        return self.model.decoder(input_ids, context=memory).logits


def generate_reports(model: CoCaModel, images, tokenizer, strategy: str = "beam", **options):
    """Write a report per image with CoCa's decoder (``caption.generate_reports``' options)."""
    return caption_generate_reports(CaptionView(model), images, tokenizer, strategy, **options)


def text_embedder(model: CoCaModel, tokenizer, max_len: int | None = None):
    """``list[str] -> (K, embed_dim)`` for ``adapt.prompt_embeddings``: ``[BOS] text [EOS]``, then the text [CLS]."""
    from ..data.tokenizer import encode_for_decoder

    max_len = max_len or model.decoder.max_len

    def encode(texts):
        ids, mask = encode_for_decoder(tokenizer, list(texts), max_len)
        return embed_reports(model, ids, mask)

    return encode


class _ContrastiveHalf(nn.Module):
    """``model(images, ids, mask)`` through the contrastive half only (BatchNorm recalibration)."""

    def __init__(self, model: CoCaModel):
        super().__init__()
        self.model = model

    def forward(self, images, input_ids, attention_mask):
        ids, mask = _trim(input_ids, attention_mask)
        return self.model(images, ids, mask, caption=False).image_embeddings


# --------------------------------------------------------------------------- building and training
def default_depths(depth: int) -> tuple[int, int]:
    """``(unimodal, multimodal)`` blocks for a decoder of ``depth`` blocks split in half (the paper's
    choice): ``depth // 2`` unimodal (at least 1), the rest multimodal (at least 1)."""
    unimodal = max(1, depth // 2)
    return unimodal, max(1, depth - unimodal)


def build_coca(P, vocab_size: int, *, seed: int = 0, max_len: int | None = None, unimodal_depth: int | None = None,
               multimodal_depth: int | None = None, projection: str = "mlp", embed_dim: int | None = None) -> CoCaModel:
    """The course's CoCa for profile ``P``, initialised from ``seed`` without touching the global random
    state: ``backbones.image_encoder(P)`` (lesson 02's ViT), a :class:`CoCaDecoder` of the profile's width
    whose ``P.depth`` blocks are split in half (``default_depths``) unless given, lesson 02's projection heads."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 8:
        raise ValueError(f"vocab_size must be the tokenizer's size (len(tokenizer)), an int >= 8, got {vocab_size!r}")
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vit = image_encoder(P)
        uni, multi = default_depths(P.depth)
        decoder = CoCaDecoder(vocab_size, P.dim, P.heads, max_len or P.max_text_len,
                              unimodal_depth=unimodal_depth or uni, multimodal_depth=multimodal_depth or multi,
                              context_dim=vit.local_dim)
        return CoCaModel(vit, decoder, embed_dim or P.dim, projection=projection)


def freeze_unused(model: CoCaModel, contrastive_weight: float, caption_weight: float) -> CoCaModel:
    """Freeze what a zero-weight term would have trained (an ablation arm trains only what it uses)."""
    unused = []
    if caption_weight == 0:
        unused += [model.decoder.multimodal, model.decoder.norm]
    if contrastive_weight == 0:
        unused += [model.image_projection, model.text_projection, model.logit_scale, model.decoder.cls_norm]
        model.decoder.cls_token.requires_grad_(False)
    for module in unused:
        module.requires_grad_(False)
    return model  # the tied output head is the token embedding, which the text tower reads: never frozen


IMAGE_INITS = ("scratch", "clip")


def start_from_clip(model: CoCaModel, clip_model: nn.Module) -> CoCaModel:
    """Copy lesson 02's CLIP image side (its ViT and its image projection head) into ``model``."""
    model.image_encoder.load_state_dict(clip_model.image_encoder.state_dict())
    model.image_projection.load_state_dict(clip_model.image_projection.state_dict())
    return model


def pretrain_coca(P, data, *, seed: int = 0, steps: int | None = None, device=None, progress: bool = True,
                  dataset: str = "synthcxr", contrastive_weight: float = CONTRASTIVE_WEIGHT,
                  caption_weight: float = CAPTION_WEIGHT, text: str = "impression", negatives: str = "same_site",
                  lr: float | None = None, batch_size: int | None = None, augment: bool = True,
                  unimodal_depth: int | None = None, multimodal_depth: int | None = None, eval_points: int = 5,
                  image_init: str = "scratch", retrain: bool = False):
    """Train (or load from the cache) CoCa on the training split's image-text pairs.

    Args:
        P: the profile (sizes, ``steps``, ``batch_size``, ``lr``, ``device``).
        data: ``medmm_lite.data.prepare_data(P, seed, dataset)``'s result.
        seed: initialisation, batch order and augmentation.
        steps, batch_size: default to the profile's.
        lr: default the profile's, for every arm (see the module docstring).
        dataset: the dataset's name, part of the cache key.
        contrastive_weight, caption_weight: the loss weights (CoCa: 1 and 2; 0 turns a term off:
            ``caption_weight=0`` is the contrastive-only ablation, ``contrastive_weight=0`` the
            captioning-only one).
        text: the section both losses read (``caption.report_section``): ``"impression"`` (default),
            ``"findings"`` or the whole ``"report"``.
        negatives: ``"same_site"`` batches (default) or ``"random"``.
        augment: light crops, rotations and window changes while training (no flips).
        unimodal_depth, multimodal_depth: default ``default_depths(P.depth)``, the profile's depth split in half.
        eval_points: how many times the validation losses are measured while training.
        image_init: ``"scratch"`` (default) or ``"clip"``: the ViT and image projection head start
            from ``pretrain_clip(P, data, seed=seed)`` (trained or loaded here) and train with the rest.

    Returns:
        ``(model, info)``: the :class:`CoCaModel` in eval mode on ``device`` (``model.image_encoder`` is
        the ViT to probe); ``info`` from ``load_or_train``, ``info["history"]`` the ``fit`` History
        (``metrics``: ``contrastive_loss``, ``caption_loss``, ``token_accuracy``, ``temperature``, those
        that ran; ``evals``: ``val_contrastive`` / ``val_caption``). BatchNorm statistics of the projection
        heads are recomputed for the final weights (``clip.recalibrate_batchnorm``).
    """
    _check_weights(contrastive_weight, caption_weight)
    if image_init not in IMAGE_INITS:
        raise ValueError(f"image_init must be one of {IMAGE_INITS}, got {image_init!r}")
    if text not in TEXTS:
        raise ValueError(f"text must be one of {TEXTS}, got {text!r}")
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    steps = steps or P.steps
    lr = lr or P.lr
    batch_size = min(batch_size or P.batch_size, len(data.splits["train"]))
    device = device or P.device
    vocab_size = len(data.tokenizer)
    max_len = int(data.input_ids.shape[1])
    ids, mask = encode_captions(data, text, max_len)
    train = torch.as_tensor(np.asarray(data.splits["train"]), dtype=torch.long)
    val = torch.as_tensor(np.asarray(data.splits["val"]), dtype=torch.long)
    tensors = dict(image=data.cohort.images[train], input_ids=ids[train], attention_mask=mask[train])
    if negatives == "same_site":
        dataset_ = SameGroupBatches(np.asarray(data.cohort.site)[train.numpy()], **tensors)
    else:
        dataset_ = TensorDictDataset(**tensors)

    clip_model, init_key = None, None
    if image_init == "clip":
        clip_model, init_key = lesson02_clip(P, data, seed=seed, device=device, progress=progress)

    def build():
        model = build_coca(P, vocab_size, seed=seed, max_len=max_len, unimodal_depth=unimodal_depth,
                           multimodal_depth=multimodal_depth)
        return start_from_clip(model, clip_model) if clip_model is not None else model

    def val_losses(model):
        out = {}
        if caption_weight > 0:
            out["val_caption"] = caption_nll(model, data.cohort.images[val], ids[val], mask[val])
        if contrastive_weight > 0:
            with torch.no_grad():
                scale = model.logit_scale()
                image_emb = torch.cat([model.encode_image(data.cohort.images[val[i:i + 256]].to(scale.device))
                                       for i in range(0, len(val), 256)])
                text_emb = torch.cat([model.encode_text(ids[val[i:i + 256]].to(scale.device),
                                                        mask[val[i:i + 256]].to(scale.device))
                                      for i in range(0, len(val), 256)])
                out["val_contrastive"] = float(clip_loss(image_emb, text_emb, scale))
        return out

    def train_fn(model):
        freeze_unused(model, contrastive_weight, caption_weight)
        generator = torch.Generator().manual_seed(seed + 1)
        step = partial(coca_step, contrastive_weight=contrastive_weight, caption_weight=caption_weight,
                       augment=light_augment if augment else None, generator=generator)
        desc = f"CoCa (contrastive x{contrastive_weight:g}, captioning x{caption_weight:g})"
        history = fit(model, step, dataset_, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                      amp=P.amp, progress=progress, desc=desc, rng=generator,
                      eval_fn=val_losses if len(val) >= 2 and eval_points else None,
                      eval_every=max(1, steps // max(1, eval_points)))
        if contrastive_weight > 0:   # the final weights' BatchNorm statistics, on the clean training pairs
            recalibrate_batchnorm(_ContrastiveHalf(model), tensors["image"], tensors["input_ids"],
                                  tensors["attention_mask"])
        return history

    key = {**profile_key(P), "data": data_fingerprint(data), "dataset": dataset, "vocab_size": vocab_size,
           "seed": seed, "steps": steps, "lr": float(lr), "batch_size": batch_size, "text": text,
           "negatives": negatives, "augment": bool(augment), "contrastive_weight": float(contrastive_weight),
           "caption_weight": float(caption_weight), "unimodal_depth": unimodal_depth or default_depths(P.depth)[0],
           "multimodal_depth": multimodal_depth or default_depths(P.depth)[1], "eval_points": eval_points,
           "image_init": init_key or image_init}
    model, info = load_or_train("coca", train_fn, build_fn=build, key=key, device=device, retrain=retrain)
    return model.eval(), info


__all__ = ["CoCaDecoder", "CoCaModel", "CoCaOutput", "CaptionView", "coca_loss", "coca_step", "caption_term",
           "caption_nll", "build_coca", "default_depths", "pretrain_coca", "freeze_unused", "start_from_clip", "IMAGE_INITS", "generate_reports", "text_embedder",
           "TEXTS", "NEGATIVES", "CONTRASTIVE_WEIGHT", "CAPTION_WEIGHT"]
