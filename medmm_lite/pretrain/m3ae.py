"""Masked modelling of reports (MLM) and of image-report pairs (M3AE-style).

**MLM** (BERT): a text encoder reads a report with 15% of its tokens corrupted
(:func:`medmm_lite.objectives.mask_tokens`) and an MLM head predicts the originals.

**M3AE-style multimodal masking** (Geng et al. 2022, "Multimodal Masked Autoencoders
Learn Transferable Representations"; Chen et al. 2022, "Multi-Modal Masked Autoencoders
for Medical Vision-and-Language Pre-Training"): one shared transformer reads both
modalities at once, each token carrying its position and a modality embedding. One
training step makes two passes::

    words pass:   image patches (all) + report (15% of the words hidden)
                  --> fusion transformer --> text outputs  -> MLM head -> the hidden words
    patches pass: [CLS] + image patches (75% dropped, as in MAE) + report (whole);
                  half the images swapped for another study's
                  --> fusion transformer --> image outputs -> MAE's light decoder -> dropped pixels
                                             [CLS] output  -> ITM head: do image and report match?

The image and text tokens attend to each other in every block, so a hidden word can
be read off the image ("large right pleural effusion": which side? how large?) and a
hidden patch can be painted from the report. **Image-text matching (ITM)**: for half
of the pairs the image is swapped for another study's (the swap is never the study
itself) and the [CLS] output must tell matched from swapped. The reconstruction
losses (patches and words) are computed on the **matched pairs only**: asking the
model to paint an image from someone else's report would teach it to ignore the report.

Choices, and why:

* Geng's single shared encoder and sin-cos image positions; from Chen et al. the
  BERT-style 15% text masking (80/10/10), ITM, the separate passes (hidden words are
  predicted from the *whole* image, hidden patches from the *whole* report) and the start
  from pretrained unimodal models (:meth:`M3AE.init_from`: the text side and fusion
  blocks from the lesson's MLM, the patch projection from its MAE). Learning a language
  from scratch takes a small transformer most of a CPU budget; the multimodal run then
  only has to learn to look at the image.
* A chosen word is hidden at **every place it occurs** in the report
  (``every_occurrence``): reports repeat their findings in the IMPRESSION, and with one
  copy visible the model copies it and never needs the image.
* Reconstruction targets are pixels (``norm_pix_loss=False``) minus the training set's
  mean image, over its standard deviation: a report speaks of brightness ("large
  effusion" = a white lung base), which MAE's per-patch normalisation would remove, and
  the mean image already holds the (aligned) anatomy, so the decoder learns what differs.
* The image decoder reads only the fused [CLS] and image tokens: whatever it knows about
  the report, the fusion transformer must have written into them.

Linear probing uses an **image-only pass** through the fusion transformer (all patches,
no text; :class:`M3AEImageEncoder`), the global feature being the mean of the image
token outputs: the same function MAE's encoder computes, so the two compare directly.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import text_encoder
from ..hub import data_fingerprint, load_or_train
from ..models import Block, ImageFeatures, PatchEmbed, TextEncoder, patchify, sincos_pos_embed_2d
from ..models.attention import init_transformer_weights
from ..models.vit import check_images
from ..objectives.masking import mae_loss, random_masking
from ..objectives.mlm import DEFAULT_SPECIAL_IDS, IGNORE_INDEX, mask_tokens, word_type_ids
from ..profiles import Profile
from ..train import fit
from .mae import PatchDecoder, default_decoder_dim, pretrain_mae

MASK_TOKEN_ID = 4  # the course tokenizer's [MASK]
# Text models here learn a language from scratch in a few hundred steps: they use twice the profile's rate.
TEXT_LR_SCALE = 2.0

# Words whose fill-in the image can inform: findings, their size, their side.
FILL_IN_WORDS = {
    "finding": ("effusion", "effusions", "pneumothorax", "nodule", "mass", "cardiomegaly", "consolidation",
                "atelectasis", "edema", "fracture"),
    "severity": ("small", "moderate", "large", "mild", "severe", "extensive", "patchy"),
    "laterality": ("left", "right", "bilateral"),
}


# --------------------------------------------------------------------------- heads
class MLMHead(nn.Module):
    """BERT's prediction head: Linear -> GELU -> LayerNorm -> Linear to the vocabulary.

    With ``tied_embedding`` the last layer's weight *is* the input token embedding (BERT, GPT-2):
    a word is predicted by how well the hidden state matches that word's input vector.
    """

    def __init__(self, dim: int, vocab_size: int, tied_embedding: nn.Embedding | None = None):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=1e-6))
        self.decoder = nn.Linear(dim, vocab_size)
        self.transform.apply(init_transformer_weights)
        init_transformer_weights(self.decoder)
        if tied_embedding is not None:
            if tuple(tied_embedding.weight.shape) != (vocab_size, dim):
                raise ValueError(f"tied_embedding must be ({vocab_size}, {dim}), got {tuple(tied_embedding.weight.shape)}")
            self.decoder.weight = tied_embedding.weight

    def forward(self, hidden):
        return self.decoder(self.transform(hidden))


def _selected(hidden, labels):
    """The hidden states and labels at the predicted positions only (the head then runs on
    ~15% of the tokens instead of all of them)."""
    chosen = labels != IGNORE_INDEX
    return hidden[chosen], labels[chosen]


def _mean_ce(logits, targets):
    """Cross-entropy averaged over targets; 0 (still differentiable) when there are none."""
    if targets.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), targets)


def _accuracy(logits, targets):
    if targets.numel() == 0:
        return torch.zeros((), device=logits.device)
    return (logits.argmax(-1) == targets).float().mean()


# --------------------------------------------------------------------------- MLM
class MLMOutput(NamedTuple):
    loss: torch.Tensor
    accuracy: torch.Tensor   # of the hidden tokens, predicted right


class MaskedLanguageModel(nn.Module):
    """A :class:`~medmm_lite.models.TextEncoder` with BERT's MLM head (tied to its embedding).

    ``forward(input_ids, attention_mask, mask_prob=0.15, generator=None, word_ids=None)`` corrupts the ids
    with :func:`~medmm_lite.objectives.mask_tokens` and returns :class:`MLMOutput`.
    ``predict_masked(input_ids, attention_mask, positions)`` gives logits at chosen positions.
    """

    def __init__(self, text_encoder: TextEncoder, mask_token_id: int = MASK_TOKEN_ID,
                 special_ids=DEFAULT_SPECIAL_IDS):
        super().__init__()
        self.text = text_encoder
        self.vocab_size, self.dim = text_encoder.vocab_size, text_encoder.dim
        self.mask_token_id, self.special_ids = mask_token_id, tuple(special_ids)
        self.head = MLMHead(self.dim, self.vocab_size, tied_embedding=text_encoder.token_embed)

    def forward(self, input_ids, attention_mask, mask_prob: float = 0.15, generator=None, word_ids=None) -> MLMOutput:
        masked, labels = mask_tokens(input_ids, attention_mask, self.mask_token_id, self.vocab_size, mask_prob,
                                     self.special_ids, whole_word=word_ids is not None, word_ids=word_ids,
                                     generator=generator)
        hidden = self.text(masked, attention_mask).token_features
        hidden, targets = _selected(hidden, labels)
        logits = self.head(hidden)
        return MLMOutput(_mean_ce(logits, targets), _accuracy(logits.detach(), targets))

    def predict_masked(self, input_ids, attention_mask, positions, images=None):
        """Logits (M, V) at the True entries of ``positions`` (B, L); ``input_ids`` already masked."""
        if images is not None:
            raise ValueError("a text-only MaskedLanguageModel cannot read images; pass images=None")
        hidden = self.text(input_ids, attention_mask).token_features
        return self.head(hidden[positions])


# --------------------------------------------------------------------------- M3AE
class FusionOutput(NamedTuple):
    cls: torch.Tensor | None   # (B, dim), None when fused without the [CLS] token
    image: torch.Tensor   # (B, n_image_tokens, dim), possibly 0 tokens
    text: torch.Tensor    # (B, n_text_tokens, dim), possibly 0 tokens


class M3AEOutput(NamedTuple):
    loss: torch.Tensor
    mim_loss: torch.Tensor        # masked-patch reconstruction (matched pairs)
    mlm_loss: torch.Tensor        # masked-word prediction (own image, whole)
    itm_loss: torch.Tensor        # image-text matching
    mlm_accuracy: torch.Tensor
    itm_accuracy: torch.Tensor
    swapped: torch.Tensor         # (B,) bool, the pairs whose image was swapped for ITM


class M3AE(nn.Module):
    """Multimodal masked autoencoder: one fusion transformer over image patches and report tokens.

    Args:
        image_size, patch_size, in_chans: the image side, patch side and channels.
        vocab_size, max_text_len: the tokenizer's size and the longest report (learned text positions).
        dim, depth, heads, mlp_ratio: the fusion transformer.
        decoder_dim, decoder_depth, decoder_heads: MAE's light image decoder.
        norm_pix_loss: normalise each target patch (MAE). Off by default here: a report speaks of
            brightness ("large effusion" = a white lung base), which per-patch normalisation removes.
        mask_token_id, special_ids: the tokenizer's [MASK] and its special tokens (never masked).
        mim_weight, mlm_weight, itm_weight: the weights of the three losses (summed).
        stem: the patch embedding (see :class:`~medmm_lite.models.PatchEmbed`). A full-image conv
            stem would let a kept patch see the pixels of its hidden neighbours, so use
            ``"conv_patchwise"`` (the same layers, each patch convolved on its own) or ``"linear"``.

    ``forward(images, input_ids, attention_mask, image_mask_ratio=0.75, text_mask_prob=0.15,
    itm=True, generator=None, word_ids=None)`` -> :class:`M3AEOutput`, in two passes through the
    fusion transformer, as in Chen et al.'s code: (1) hidden words, the whole image -> MLM loss;
    (2) 75% of the patches hidden, the whole report, half the images swapped -> MIM loss on the
    matched pairs and ITM loss on all (Chen et al. run ITM in a third, unmasked pass; it rides on
    the patch pass here to save compute). With ``word_ids`` the text is
    masked by groups (see :func:`~medmm_lite.objectives.mask_tokens`): ``word_type_ids`` hides a chosen
    word at every place it occurs in the report.
    """

    def __init__(self, image_size: int, patch_size: int, vocab_size: int, max_text_len: int, in_chans: int = 1,
                 dim: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0, decoder_dim: int = 64,
                 decoder_depth: int = 2, decoder_heads: int = 4, norm_pix_loss: bool = False,
                 mask_token_id: int = MASK_TOKEN_ID, special_ids=DEFAULT_SPECIAL_IDS, mim_weight: float = 1.0,
                 mlm_weight: float = 1.0, itm_weight: float = 1.0, stem: str = "linear"):
        super().__init__()
        if dim % 4 or dim % heads:
            raise ValueError(f"dim={dim} must be divisible by 4 (sin-cos positions) and by heads={heads}")
        self.dim, self.vocab_size, self.max_text_len = dim, vocab_size, max_text_len
        self.patch_size, self.in_chans = patch_size, in_chans
        self.norm_pix_loss = norm_pix_loss
        self.mask_token_id, self.special_ids = mask_token_id, tuple(special_ids)
        self.weights = {"mim": mim_weight, "mlm": mlm_weight, "itm": itm_weight}

        self.patch_embed = PatchEmbed(image_size, patch_size, in_chans, dim, stem=stem)
        if self.patch_embed.crosses_patches:
            raise ValueError("M3AE hides patches after embedding them; a full-image conv stem lets kept patches "
                             "see hidden ones. Use stem='conv_patchwise' (the same layers) or 'linear'")
        self.grid_size, self.num_patches = self.patch_embed.grid_size, self.patch_embed.num_patches
        self.image_size = self.patch_embed.image_size
        self.image_pos_embed = nn.Parameter(sincos_pos_embed_2d(*self.grid_size, dim, cls_token=False),
                                            requires_grad=False)
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.text_pos_embed = nn.Embedding(max_text_len, dim)
        self.modality_embed = nn.Embedding(2, dim)    # 0 = image token, 1 = text token
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

        self.image_decoder = PatchDecoder(dim, self.grid_size, patch_size ** 2 * in_chans, decoder_dim,
                                          decoder_depth, decoder_heads, mlp_ratio)
        self.mlm_head = MLMHead(dim, vocab_size, tied_embedding=self.token_embed)
        self.itm_head = nn.Linear(dim, 2)
        # Pixel targets are standardised with the training set's statistics (set_pixel_statistics):
        # the per-pixel mean image (AlexNet's "subtract the mean image") and one standard deviation.
        # Chest films are aligned, so the mean image already holds the anatomy; the decoder starts
        # from it and learns what differs. From a zero-centred output, an optimiser moving each weight
        # by ~lr per step would otherwise need hundreds of steps just to reach the right brightness.
        self.register_buffer("pixel_mean", torch.zeros(1, self.num_patches, patch_size ** 2 * in_chans))
        self.register_buffer("pixel_std", torch.ones(()))
        self.reset_parameters()

    @torch.no_grad()
    def set_pixel_statistics(self, images) -> "M3AE":
        """Store the mean image (as patches) and the standard deviation around it of ``images``
        (the training images)."""
        mean_image = images.mean(dim=0, keepdim=True)
        self.pixel_mean.copy_(patchify(mean_image, self.patch_size))
        self.pixel_std.fill_(float((images - mean_image).std()))
        return self

    def pixel_target(self, images):
        """The MIM target: patches minus the mean image, over the standard deviation (or per-patch
        normalised with ``norm_pix_loss``)."""
        patches = patchify(images, self.patch_size)
        return patches if self.norm_pix_loss else (patches - self.pixel_mean) / self.pixel_std

    def to_pixels(self, pred):
        """Decoder output -> pixel values (the inverse of :meth:`pixel_target`; with norm_pix_loss the
        output stays per-patch normalised)."""
        return pred if self.norm_pix_loss else pred * self.pixel_std + self.pixel_mean

    @torch.no_grad()
    def reset_parameters(self):
        """timm / BERT init for the fusion transformer and embeddings; MAE's for the decoder;
        the patch projection like a Linear (xavier-uniform), as in MAE."""
        for module in [self.token_embed, self.text_pos_embed, self.modality_embed, self.blocks, self.norm,
                       self.itm_head, self.mlm_head.transform]:
            module.apply(init_transformer_weights)
        self.patch_embed.reset_parameters()
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.zeros_(self.mlm_head.decoder.bias)
        self.image_decoder.reset_parameters()

    # -- embedding and fusion ---------------------------------------------------

    def check_images(self, images):
        check_images(images, "M3AE", self.in_chans, self.image_size)

    def embed_image(self, images):
        """(B, C, H, W) -> (B, N, dim): patch projection + 2-D sin-cos position + image-modality vector."""
        self.check_images(images)
        return self.patch_embed(images) + self.image_pos_embed + self.modality_embed.weight[0]

    def embed_text(self, input_ids):
        """(B, L) ids -> (B, L, dim): token + learned position + text-modality vector."""
        L = input_ids.shape[1]
        if L > self.max_text_len:
            raise ValueError(f"reports of {L} tokens are longer than the model's max_text_len={self.max_text_len}; "
                             "encode them with max_len <= max_text_len")
        positions = torch.arange(L, device=input_ids.device)
        return self.token_embed(input_ids) + self.text_pos_embed(positions) + self.modality_embed.weight[1]

    def fuse(self, image_tokens=None, text_tokens=None, attention_mask=None, cls: bool = True) -> FusionOutput:
        """Run ``[CLS] + image_tokens + text_tokens`` through the fusion transformer.

        Either modality may be None (left out). ``attention_mask`` (B, L_text) marks real text
        tokens; padding is hidden from every query. ``cls=False`` leaves the fusion [CLS] out
        (the word pass and the inference helpers do not read it); ``FusionOutput.cls`` is then None.
        """
        if image_tokens is None and text_tokens is None:
            raise ValueError("fuse needs image tokens, text tokens, or both")
        B = (image_tokens if image_tokens is not None else text_tokens).shape[0]
        parts = [self.cls_token.expand(B, -1, -1)] if cls else []
        n_image = image_tokens.shape[1] if image_tokens is not None else 0
        parts += [t for t in (image_tokens, text_tokens) if t is not None]
        x = torch.cat(parts, dim=1)
        first_text = int(cls) + n_image
        mask = None
        if text_tokens is not None and attention_mask is not None and not bool(attention_mask.all()):
            keep = torch.ones(B, x.shape[1], dtype=torch.bool, device=x.device)
            keep[:, first_text:] = attention_mask.bool()
            mask = keep[:, None, None, :]            # (B, 1, 1, S): every query sees the real keys
        for block in self.blocks:
            x = block(x, attn_mask=mask)
        x = self.norm(x)
        return FusionOutput(x[:, 0] if cls else None, x[:, int(cls):first_text], x[:, first_text:])

    # -- the three objectives ---------------------------------------------------

    def forward(self, images, input_ids, attention_mask, image_mask_ratio: float = 0.75,
                text_mask_prob: float = 0.15, itm: bool = True, generator=None, word_ids=None) -> M3AEOutput:
        B = images.shape[0]
        if input_ids.shape[0] != B or attention_mask.shape != input_ids.shape:
            raise ValueError(f"images ({B}), input_ids {tuple(input_ids.shape)} and attention_mask "
                             f"{tuple(attention_mask.shape)} must describe the same batch")
        if itm and B < 2:
            raise ValueError("image-text matching needs at least 2 pairs per batch (one to swap in)")
        device = images.device
        where = generator.device if generator is not None else device

        # Pass 1, masked words: the report with 15% of its words hidden, the WHOLE image
        # (Chen et al.'s compute_mlm: mask_text=True, mask_image=False).
        masked_ids, labels = mask_tokens(input_ids, attention_mask, self.mask_token_id, self.vocab_size,
                                         text_mask_prob, self.special_ids, whole_word=word_ids is not None,
                                         word_ids=word_ids, generator=generator)
        image_tokens = self.embed_image(images)
        fused = self.fuse(image_tokens, self.embed_text(masked_ids), attention_mask, cls=False)
        hidden, targets = _selected(fused.text, labels)
        logits = self.mlm_head(hidden)
        mlm = _mean_ce(logits, targets)

        # Pass 2, masked patches and matching: 75% of the patches hidden, the WHOLE report; for
        # half the pairs the image is another study's (an offset in [1, B) never picks the row itself).
        rows = torch.arange(B, device=device)
        swapped = torch.zeros(B, dtype=torch.bool, device=device)
        if itm:
            swapped = torch.rand(B, generator=generator, device=where).to(device) < 0.5
            offset = torch.randint(1, B, (B,), generator=generator, device=where).to(device)
        image_rows = torch.where(swapped, (rows + offset) % B, rows) if itm else rows
        kept, mask, ids_restore = random_masking(image_tokens[image_rows], image_mask_ratio, generator=generator)
        fused = self.fuse(kept, self.embed_text(input_ids), attention_mask)
        matched = ~swapped
        pred = self.image_decoder(torch.cat([fused.cls[:, None], fused.image], dim=1), ids_restore)
        target = self.pixel_target(images[image_rows])
        # reconstruction counts on matched pairs only: a swapped report describes another image
        mim = (mae_loss(pred, target, mask * matched[:, None].to(mask.dtype), self.norm_pix_loss)
               if bool(matched.any()) else pred.sum() * 0.0)
        if itm:
            itm_logits = self.itm_head(fused.cls)
            itm_targets = matched.long()                 # 1 = this image belongs to this report
            itm_loss = F.cross_entropy(itm_logits.float(), itm_targets)
            itm_acc = _accuracy(itm_logits.detach(), itm_targets)
        else:
            itm_loss = itm_acc = torch.zeros((), device=device)
        w = self.weights
        loss = w["mim"] * mim + w["mlm"] * mlm + (w["itm"] * itm_loss if itm else 0.0)
        return M3AEOutput(loss, mim, mlm, itm_loss, _accuracy(logits.detach(), targets), itm_acc, swapped)

    # -- inference helpers ------------------------------------------------------

    def encode_image(self, images) -> ImageFeatures:
        """Image-only pass (every patch, no text): global = mean of the image token outputs."""
        fused = self.fuse(self.embed_image(images), cls=False)
        return ImageFeatures(fused.image.mean(dim=1), fused.image)

    def predict_masked(self, input_ids, attention_mask, positions, images=None, image_mask_ratio: float = 0.0,
                       generator=None):
        """MLM logits (M, V) at the True entries of ``positions`` (B, L) of already-masked ``input_ids``,
        reading the image too when ``images`` is given (``image_mask_ratio`` of its patches dropped)."""
        image_tokens = None
        if images is not None:
            image_tokens = self.embed_image(images)
            if image_mask_ratio > 0:
                image_tokens, _, _ = random_masking(image_tokens, image_mask_ratio, generator=generator)
        fused = self.fuse(image_tokens, self.embed_text(input_ids), attention_mask, cls=False)
        return self.mlm_head(fused.text[positions])

    def reconstruct_patches(self, images, input_ids=None, attention_mask=None, mask_ratio: float = 0.75,
                            generator=None):
        """Drop ``mask_ratio`` of the patches and predict them, reading the report too when ``input_ids``
        is given (whole, unmasked). Returns ``(pred, mask)``: (B, N, p*p*C) in pixels, and (B, N), 1 = removed."""
        kept, mask, ids_restore = random_masking(self.embed_image(images), mask_ratio, generator=generator)
        text = self.embed_text(input_ids) if input_ids is not None else None
        fused = self.fuse(kept, text, attention_mask)
        pred = self.image_decoder(torch.cat([fused.cls[:, None], fused.image], dim=1), ids_restore)
        return self.to_pixels(pred), mask

    def image_encoder(self) -> "M3AEImageEncoder":
        return M3AEImageEncoder(self)

    @torch.no_grad()
    def init_from(self, mlm: MaskedLanguageModel | None = None, mae=None) -> "M3AE":
        """Start from unimodal models, as medical M3AE starts from a pretrained ViT and RoBERTa.

        ``mlm`` (a :class:`MaskedLanguageModel` of the same width, depth and text length): its token
        and position embeddings, transformer blocks, final norm and MLM head become the fusion
        transformer's, so the model already reads reports on step 1. The text modality embedding
        is zeroed, so on text alone the M3AE starts as exactly that MLM.
        ``mae`` (an :class:`~medmm_lite.pretrain.mae.MAE`): its patch projection, which has learned
        what 8x8 pieces of a radiograph look like. The fusion blocks can only start from one of
        the two; the text needs them more (language is the slower thing to learn).
        """
        if mlm is not None:
            text = mlm.text
            if (text.dim, len(text.blocks), text.max_len, text.vocab_size) != \
                    (self.dim, len(self.blocks), self.max_text_len, self.vocab_size):
                raise ValueError(f"the MLM's (dim, depth, max_len, vocab) = {(text.dim, len(text.blocks), text.max_len, text.vocab_size)} "
                                 f"differ from the M3AE's {(self.dim, len(self.blocks), self.max_text_len, self.vocab_size)}")
            self.token_embed.load_state_dict(text.token_embed.state_dict())
            self.text_pos_embed.load_state_dict(text.pos_embed.state_dict())
            self.blocks.load_state_dict(text.blocks.state_dict())
            self.norm.load_state_dict(text.norm.state_dict())
            self.mlm_head.load_state_dict(mlm.head.state_dict())
            self.modality_embed.weight[1].zero_()
        if mae is not None:
            self.patch_embed.load_state_dict(mae.encoder.patch_embed.state_dict())
        return self


class M3AEImageEncoder(nn.Module):
    """The image side of a trained M3AE as an ordinary image encoder (for probes and fine-tuning):
    ``forward(images)`` -> :class:`~medmm_lite.models.ImageFeatures` from an image-only pass
    through the fusion transformer. Shares the M3AE's parameters (no copy)."""

    def __init__(self, m3ae: M3AE):
        super().__init__()
        self.m3ae = m3ae
        self.dim = self.local_dim = m3ae.dim
        self.grid_size, self.patch_size, self.in_chans = m3ae.grid_size, m3ae.patch_size, m3ae.in_chans

    def forward(self, images) -> ImageFeatures:
        return self.m3ae.encode_image(images)


# --------------------------------------------------------------------------- builders
def build_mlm(P: Profile, vocab_size: int) -> MaskedLanguageModel:
    """The standard text encoder for profile ``P`` with an MLM head."""
    return MaskedLanguageModel(text_encoder(P, vocab_size))


def build_m3ae(P: Profile, vocab_size: int, decoder_dim: int | None = None, decoder_depth: int = 2,
               norm_pix_loss: bool = False) -> M3AE:
    """An M3AE for profile ``P``: the fusion transformer has the standard ViT's width and depth."""
    return M3AE(P.image_size, P.patch_size, vocab_size, P.max_text_len, dim=P.dim, depth=P.depth, heads=P.heads,
                decoder_dim=decoder_dim or default_decoder_dim(P.dim), decoder_depth=decoder_depth,
                decoder_heads=P.heads, norm_pix_loss=norm_pix_loss, stem=masked_stem(P.vit_stem))


def masked_stem(stem: str) -> str:
    """The profile's ViT stem, made patchwise where it would cross patches: the layers (and so a
    pretrained MAE's stem weights) stay the same, no kept patch sees a hidden one."""
    return "conv_patchwise" if stem == "conv" else stem


def default_text_steps(P: Profile, model: str) -> int:
    """Optimiser steps for the text models, from the profile's image budget ``P.steps``.

    The MLM gets ``P.steps``: a small transformer learning a language from scratch needs them
    (below ~500 steps it still guesses the most frequent tokens). The M3AE starts from that MLM
    and the MAE, and each of its steps runs the fusion transformer twice over the whole report and
    up to every patch, several times an MAE step: it gets ``P.steps // 4``.
    """
    share = {"mlm": 1, "m3ae": 4}
    if model not in share:
        raise ValueError(f"model must be 'mlm' or 'm3ae', got {model!r}")
    return max(1, P.steps // share[model])


def _seeded(build, seed):
    with torch.random.fork_rng(devices=[]):  # the same initial weights for a seed, whatever ran before
        torch.manual_seed(seed)
        return build()


def trim_padding(batch: dict) -> dict:
    """Cut the text columns to the longest real report in the batch: padding costs attention
    and MLP time for nothing (it is masked out anyway)."""
    length = int(batch["attention_mask"].sum(dim=1).max())
    return {k: (v[:, :length] if k in ("input_ids", "attention_mask", "word_ids") else v) for k, v in batch.items()}


def _base_key(P, data, seed, dataset, steps, batch_size, lr):
    return {"profile": P.name, "dataset": dataset, "seed": seed, "n_studies": len(data.cohort),
            "data": data_fingerprint(data), "n_train": len(data.splits["train"]), "image_size": P.image_size, "patch_size": P.patch_size,
            "dim": P.dim, "depth": P.depth, "heads": P.heads, "vocab_size": len(data.tokenizer),
            "max_text_len": int(data.input_ids.shape[1]), "steps": steps, "batch_size": batch_size, "lr": lr}


def _text_columns(data, rows, every_occurrence: bool) -> dict:
    """The report columns of a training set; with ``every_occurrence`` also the word groups."""
    columns = {"input_ids": data.input_ids[rows], "attention_mask": data.attention_mask[rows]}
    if every_occurrence:
        columns["word_ids"] = word_type_ids(columns["input_ids"], data.tokenizer, columns["attention_mask"])
    return columns


def pretrain_mlm(P: Profile, data, *, seed: int = 0, steps: int | None = None, batch_size: int | None = None,
                 lr: float | None = None, mask_prob: float = 0.15, every_occurrence: bool = False,
                 dataset: str = "synthcxr", device=None, progress: bool = True):
    """Train (or load) a text-only masked language model (BERT) on the training reports of ``data``.

    Defaults: ``default_text_steps(P, "mlm")`` steps at ``TEXT_LR_SCALE * P.lr`` (a small transformer
    learning language from scratch needs the larger rate), BERT's token masking. ``every_occurrence`` hides a chosen
    word at every place it occurs in the report (:func:`~medmm_lite.objectives.word_type_ids`).
    Returns ``(model, info)`` from :func:`medmm_lite.hub.load_or_train`."""
    from ..data.tensors import TensorDictDataset  # medmm_lite.data (and SciPy) load on first use

    steps, batch_size, device = steps or default_text_steps(P, "mlm"), batch_size or P.batch_size, device or P.device
    lr = lr or TEXT_LR_SCALE * P.lr
    train_idx = torch.as_tensor(data.splits["train"], dtype=torch.long)
    key = {**_base_key(P, data, seed, dataset, steps, batch_size, lr), "mask_prob": mask_prob,
           "every_occurrence": every_occurrence}
    vocab_size = len(data.tokenizer)

    def train(model):
        masks = torch.Generator().manual_seed(seed)

        def loss_fn(m, batch):
            batch = trim_padding(batch)
            out = m(batch["input_ids"], batch["attention_mask"], mask_prob=mask_prob, generator=masks,
                    word_ids=batch.get("word_ids"))
            return out.loss, {"accuracy": out.accuracy}

        dataset_ = TensorDictDataset(**_text_columns(data, train_idx, every_occurrence))
        return fit(model, loss_fn, dataset_, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                   amp=P.amp, progress=progress, desc="MLM", rng=masks)

    return load_or_train("mlm", train, build_fn=lambda: _seeded(lambda: build_mlm(P, vocab_size), seed), key=key,
                         device=device)


def pretrain_m3ae(P: Profile, data, *, seed: int = 0, steps: int | None = None, batch_size: int | None = None,
                  lr: float | None = None, image_mask_ratio: float = 0.75, text_mask_prob: float = 0.15,
                  itm: bool = True, every_occurrence: bool = True, norm_pix_loss: bool = False,
                  decoder_dim: int | None = None, decoder_depth: int = 2, init_text: bool = True,
                  init_patches: bool = True, mae_options: dict | None = None, dataset: str = "synthcxr", device=None,
                  progress: bool = True):
    """Train (or load) an M3AE on the training image-report pairs of ``data`` (a ``PreparedData``).

    ``every_occurrence``: a chosen word is hidden at every place it occurs in the report; with
    plain token masking the IMPRESSION's copy of a word gives it away and the model never needs
    the image.
    ``init_text`` / ``init_patches``: start from ``pretrain_mlm(P, data, seed=seed)`` (text side and
    fusion blocks) and ``pretrain_mae(P, data, seed=seed, **mae_options)`` (patch projection; pass the
    lesson's MAE settings, e.g. ``dict(steps=..., norm_pix_loss=False)``, to start from that MAE), see
    :meth:`M3AE.init_from`; both come from the cache when the lesson trained them, and are trained
    here otherwise. Defaults: ``default_text_steps(P, "m3ae")`` steps at
    ``TEXT_LR_SCALE * P.lr``.

    Returns ``(model, info)`` from :func:`medmm_lite.hub.load_or_train`; the History logs the
    three losses (``mim``, ``mlm``, ``itm``) and the ITM and MLM accuracies per step.
    """
    from ..data.tensors import TensorDictDataset  # medmm_lite.data (and SciPy) load on first use

    steps, batch_size, device = steps or default_text_steps(P, "m3ae"), batch_size or P.batch_size, device or P.device
    lr = lr or TEXT_LR_SCALE * P.lr
    decoder_dim = decoder_dim or default_decoder_dim(P.dim)
    train_idx = torch.as_tensor(data.splits["train"], dtype=torch.long)
    vocab_size = len(data.tokenizer)
    key = {**_base_key(P, data, seed, dataset, steps, batch_size, lr), "image_mask_ratio": image_mask_ratio,
           "text_mask_prob": text_mask_prob, "itm": itm, "every_occurrence": every_occurrence,
           "norm_pix_loss": norm_pix_loss, "decoder_dim": decoder_dim, "decoder_depth": decoder_depth,
           "init_text": init_text, "init_patches": init_patches}
    if mae_options:   # only then: a key without it stays the key of M3AEs trained before it existed
        key["mae_options"] = sorted(mae_options.items())

    def build():
        return _seeded(lambda: build_m3ae(P, vocab_size, decoder_dim, decoder_depth, norm_pix_loss), seed)

    def train(model):
        mlm = pretrain_mlm(P, data, seed=seed, dataset=dataset, device=device, progress=progress)[0] if init_text else None
        mae = (pretrain_mae(P, data, seed=seed, dataset=dataset, device=device, progress=progress, **(mae_options or {}))[0]
               if init_patches else None)
        model.init_from(mlm, mae)
        model.set_pixel_statistics(data.cohort.images[train_idx])
        masks = torch.Generator().manual_seed(seed)

        def loss_fn(m, batch):
            batch = trim_padding(batch)
            out = m(batch["image"], batch["input_ids"], batch["attention_mask"], image_mask_ratio=image_mask_ratio,
                    text_mask_prob=text_mask_prob, itm=itm, generator=masks, word_ids=batch.get("word_ids"))
            return out.loss, {"mim": out.mim_loss, "mlm": out.mlm_loss, "itm": out.itm_loss,
                              "mlm_accuracy": out.mlm_accuracy, "itm_accuracy": out.itm_accuracy}

        dataset_ = TensorDictDataset(image=data.cohort.images[train_idx],
                                     **_text_columns(data, train_idx, every_occurrence))
        return fit(model, loss_fn, dataset_, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                   amp=P.amp, progress=progress, desc="M3AE", rng=masks)

    return load_or_train("m3ae", train, build_fn=build, key=key, device=device)


# --------------------------------------------------------------------------- evaluation
def derangement(n: int, seed: int = 0) -> torch.Tensor:
    """A random permutation with no fixed point: row i is paired with another row ``perm[i] != i``."""
    if n < 2:
        raise ValueError(f"shuffling pairs needs at least 2 items, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(1)    # each item in the cycle points at its neighbour
    return perm


class FillInQueries(NamedTuple):
    """Reports with every occurrence of one target word masked: one row per (report, word)."""

    input_ids: torch.Tensor       # (Q, L) with [MASK] at the target word's positions
    attention_mask: torch.Tensor  # (Q, L)
    positions: torch.Tensor       # (Q, L) bool, the masked positions
    study: torch.Tensor           # (Q,) the cohort index of the study the report belongs to
    word: list                    # (Q,) the hidden word
    group: list                   # (Q,) its group in FILL_IN_WORDS ("finding", "severity", "laterality")


def fill_in_queries(data, idx, words=None, mask_token_id: int = MASK_TOKEN_ID,
                    occurrences: str = "all") -> FillInQueries:
    """Build fill-in-the-blank queries from the reports of studies ``idx``.

    For each report and each target word it contains, **every** occurrence of the word is
    replaced by [MASK] (the IMPRESSION usually repeats the FINDINGS, and one visible copy
    would give the answer away); ``occurrences="first"`` hides only the first one (to measure
    how much a model copies). Words that the tokenizer splits into pieces are skipped.
    """
    if occurrences not in ("all", "first"):
        raise ValueError(f"occurrences must be 'all' or 'first', got {occurrences!r}")
    words = words or FILL_IN_WORDS
    tok = data.tokenizer
    idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    ids, att = data.input_ids[idx], data.attention_mask[idx]
    vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
    continues = torch.tensor([t.startswith("##") for t in vocab])
    next_continues = F.pad(continues[ids[:, 1:]], (0, 1), value=False)   # the token after is a "##" piece
    rows, pos_list, names, groups, split = [], [], [], [], []
    for group, group_words in words.items():
        for word in group_words:
            pieces = tok.tokenize(word)
            if len(pieces) != 1:
                split.append(word)
                continue
            hits = (ids == tok.convert_tokens_to_ids(pieces[0])) & ~next_continues & att.bool()
            if occurrences == "first":
                hits &= torch.cumsum(hits.long(), dim=1) == 1
            present = torch.nonzero(hits.any(dim=1)).flatten()
            rows.append(present)
            pos_list.append(hits[present])
            names += [word] * len(present)
            groups += [group] * len(present)
    if split:
        warnings.warn(f"skipping words the tokenizer splits into pieces: {split}", stacklevel=2)
    if not names:
        raise ValueError("none of the target words occurs in these reports")
    rows, positions = torch.cat(rows), torch.cat(pos_list)
    masked = ids[rows].masked_fill(positions, mask_token_id)
    return FillInQueries(masked, att[rows], positions, idx[rows], names, groups)


@torch.no_grad()
def fill_in_predictions(model, queries: FillInQueries, images=None, batch_size: int = 256, device=None,
                        image_mask_ratio: float = 0.0, seed: int = 0, truth=None):
    """Predicted token id at every masked position of every query (flattened in row order).

    ``images``: None (text only), or (Q, C, H, W) one image per query (the true one or another).
    With ``truth`` (the true ids, flattened the same way) also returns the log-probability the
    model gives each true word: ``(pred, log_prob)``.
    """
    model.eval()
    device = device or next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    preds, log_probs, done = [], [], 0
    for start in range(0, len(queries.input_ids), batch_size):
        sl = slice(start, start + batch_size)
        att = queries.attention_mask[sl]
        length = int(att.sum(1).max())
        kwargs = {}
        if images is not None:
            kwargs = {"images": images[sl].to(device), "image_mask_ratio": image_mask_ratio, "generator": generator}
        logits = model.predict_masked(queries.input_ids[sl, :length].to(device), att[:, :length].to(device),
                                      queries.positions[sl, :length].to(device), **kwargs).float().cpu()
        preds.append(logits.argmax(-1))
        if truth is not None:
            t = truth[done:done + len(logits)]
            log_probs.append(logits.log_softmax(-1).gather(1, t[:, None])[:, 0])
        done += len(logits)
    pred = torch.cat(preds)
    return (pred, torch.cat(log_probs)) if truth is not None else pred


def fill_in_accuracy(model, data, idx, *, conditions=("with_image", "without_image", "shuffled_image"),
                     words=None, seed: int = 0, batch_size: int = 256, device=None,
                     image_mask_ratio: float = 0.0, occurrences: str = "all") -> dict:
    """Masked-word accuracy on the target words of the reports of ``idx``, per image condition.

    Conditions: ``with_image`` (the study's own image), ``without_image`` (no image tokens at
    all: the fusion transformer reads the text alone), ``shuffled_image`` (another study's
    image, a random derangement). A text-only model takes ``conditions=("without_image",)``.

    Returns ``{"overall": {cond: acc}, "by_group": {group: {cond: acc}}, "by_word": {word: {cond: acc}},
    "n_queries": Q, "n_masked": M, "predictions": {cond: (M,) ids}, "log_prob": {cond: (M,) log p(true word)},
    "truth": (M,) ids, "query_of_position": (M,), "queries": FillInQueries}``; accuracies are over
    masked positions. The log-probabilities allow a paired comparison of two conditions that is
    far more sensitive than accuracy (a model can grow surer of the right word before it flips a guess).
    """
    queries = fill_in_queries(data, idx, words, occurrences=occurrences)
    truth = data.input_ids[queries.study][queries.positions]
    # which query each masked position belongs to, to group the positions by word
    query_of = torch.nonzero(queries.positions)[:, 0]
    images = data.cohort.images
    partner = derangement(len(idx), seed)
    position_in_idx = {int(s): i for i, s in enumerate(np.asarray(idx))}
    local = torch.tensor([position_in_idx[int(s)] for s in queries.study])
    shuffled_study = torch.as_tensor(np.asarray(idx))[partner[local]]
    sources = {"with_image": lambda: images[queries.study], "without_image": lambda: None,
               "shuffled_image": lambda: images[shuffled_study]}
    result = {"overall": {}, "by_group": {}, "by_word": {}, "n_queries": len(queries.word),
              "n_masked": int(len(truth)), "predictions": {}, "log_prob": {}}
    words_per_position = [queries.word[q] for q in query_of.tolist()]
    groups_per_position = [queries.group[q] for q in query_of.tolist()]
    for cond in conditions:
        if cond not in sources:
            raise ValueError(f"unknown condition {cond!r}; choose from {tuple(sources)}")
        pred, log_prob = fill_in_predictions(model, queries, sources[cond](), batch_size=batch_size, device=device,
                                             image_mask_ratio=image_mask_ratio, seed=seed, truth=truth)
        correct = (pred == truth).numpy()
        result["predictions"][cond] = pred
        result["log_prob"][cond] = log_prob
        result["overall"][cond] = float(correct.mean())
        for key, labels in (("by_group", groups_per_position), ("by_word", words_per_position)):
            labels = np.asarray(labels)
            for name in dict.fromkeys(labels):
                result[key].setdefault(str(name), {})[cond] = float(correct[labels == name].mean())
    result["queries"] = queries
    result["truth"] = truth
    result["query_of_position"] = query_of
    return result


def box_patch_mask(boxes_per_study, grid_size: tuple[int, int]) -> torch.Tensor:
    """(B, N) bool: True for patches that overlap one of the study's finding boxes (fractions)."""
    h, w = grid_size
    out = torch.zeros(len(boxes_per_study), h, w, dtype=torch.bool)
    for i, boxes in enumerate(boxes_per_study):
        for item in boxes:
            x0, y0, x1, y1 = item["box"]
            c0, c1 = int(np.floor(x0 * w)), int(np.ceil(x1 * w))
            r0, r1 = int(np.floor(y0 * h)), int(np.ceil(y1 * h))
            out[i, max(r0, 0):min(r1, h), max(c0, 0):min(c1, w)] = True
    return out.flatten(1)


@torch.no_grad()
def reconstruction_error(model: M3AE, data, idx, *, conditions=("with_report", "without_report", "shuffled_report"),
                         mask_ratio: float = 0.75, seed: int = 0, batch_size: int = 256, device=None,
                         reference_image=None) -> dict:
    """Masked-patch reconstruction error on the images of ``idx``, per report condition.

    Every condition hides the same patches (one seeded mask per image), so the conditions
    differ only in what text the model reads: the study's own report (whole, unmasked), none,
    or another study's report (a random derangement). Errors are the model's loss on removed
    patches (pixel MSE when ``norm_pix_loss`` is off), over all removed patches (``all``) and
    over removed patches that overlap a finding box (``in_boxes``), where the report has the
    most to say. ``reference_image`` (1, C, H, W), e.g. the mean training image, adds a condition
    ``"reference"``: the error of pasting that image into the holes, the bar a model must beat.
    Returns ``{"all": {cond: mse}, "in_boxes": {cond: mse}, "per_image": {cond: (B,) tensor}}``.
    """
    model.eval()
    device = device or next(model.parameters()).device
    idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    partner = idx_t[derangement(len(idx_t), seed)]
    in_box = box_patch_mask([data.cohort.boxes[int(i)] for i in idx_t], model.grid_size)
    texts = {"with_report": idx_t, "without_report": None, "shuffled_report": partner}
    if reference_image is not None:
        if model.norm_pix_loss:
            raise ValueError("a reference image is compared in pixels; this model predicts normalised patches")
        texts["reference"] = None
        conditions = (*conditions, "reference")
    result = {"all": {}, "in_boxes": {}, "per_image": {}}
    for cond in conditions:
        if cond not in texts:
            raise ValueError(f"unknown condition {cond!r}; choose from {tuple(texts)}")
        generator = torch.Generator().manual_seed(seed)    # the same hidden patches in every condition
        errors, masks = [], []
        for start in range(0, len(idx_t), batch_size):
            rows = idx_t[start:start + batch_size]
            images = data.cohort.images[rows].to(device)
            ids = att = None
            if texts[cond] is not None:
                text_rows = texts[cond][start:start + batch_size]
                att = data.attention_mask[text_rows]
                length = int(att.sum(1).max())
                ids, att = data.input_ids[text_rows, :length].to(device), att[:, :length].to(device)
            pred, mask = model.reconstruct_patches(images, ids, att, mask_ratio=mask_ratio, generator=generator)
            if cond == "reference":
                pred = patchify(reference_image.to(device), model.patch_size).expand_as(pred)
            per_patch = mae_loss(pred, patchify(images, model.patch_size), mask, model.norm_pix_loss, reduction="none")
            errors.append(per_patch.cpu())
            masks.append(mask.cpu())
        errors, masks = torch.cat(errors), torch.cat(masks)
        boxed = masks * in_box
        result["all"][cond] = float((errors * masks).sum() / masks.sum())
        result["in_boxes"][cond] = float((errors * boxed).sum() / boxed.sum().clamp(min=1))
        result["per_image"][cond] = (errors * masks).sum(1) / masks.sum(1)
    return result


__all__ = ["default_text_steps", "M3AE", "M3AEOutput", "M3AEImageEncoder", "FusionOutput", "MaskedLanguageModel", "MLMOutput", "MLMHead",
           "build_m3ae", "build_mlm", "pretrain_m3ae", "pretrain_mlm", "trim_padding", "FILL_IN_WORDS",
           "FillInQueries", "fill_in_queries", "fill_in_predictions", "fill_in_accuracy", "reconstruction_error",
           "box_patch_mask", "derangement"]
