"""Local image-text alignment, as in GLoRIA (Huang et al., ICCV 2021).

CLIP compares one vector per image with one vector per report. A small finding (a
1.5 cm nodule covers well under 1% of a chest film) barely moves the image's single
vector. GLoRIA adds a *local* loss: every word of a report looks for the image
regions it describes, and the report matches its image when its words find good
regions there.

For report t, image i, word w (feature ``e_w``) and region r (feature ``v_r``):

    s_wr      = <e_w, v_r>                                  word-region scores
    a_wr      = softmax_r( T_att * softmax_w(s_wr) )         attention of word w over the regions (T_att = 4)
    c_w       = sum_r a_wr v_r                               what word w sees in image i
    Z(t, i)   = log sum_w exp( T_sim * cos(e_w, c_w) )       the report's words, aggregated (T_sim = 5)
    logits    = T_loss * Z                                    (T_loss = 10), cross-entropy both ways

The first softmax (over the words, for each region) is a detail GLoRIA inherits from
AttnGAN/ControlGAN: a region is first shared out among the words, then each word's
shares are turned into an attention map over the regions.

``attention="cosine"`` replaces the two softmaxes by one over the regions of
``T_att * cos(e_w, v_r)``, everything else unchanged. GLoRIA starts from a pretrained
ResNet and BERT; trained from scratch (lesson 03 measures it), the two-softmax attention
collapses within a few dozen steps: the same word takes the largest share of nearly every
region, so every word's map is flat. The cosine attention has no competition among words
and bounded logits; its maps still flatten over a longer run, as the patch features of an
image drift towards their common mean, but their peaks keep pointing above chance.

Words, not word pieces: a WordPiece tokenizer may cut "atelectasis" into
"at ##elect ##asis". GLoRIA merges the pieces of a word back into one feature and
ignores special tokens and punctuation (its reports are stripped to ``\\w+`` words);
:func:`merge_subwords` does that for a whole batch at once.

GLoRIA's reference code (``gloria/loss/gloria_loss.py``) loops over the reports of a
batch. :func:`local_contrastive_loss` computes the same numbers for all report-image
pairs at once with masks (tests/test_local_alignment.py checks it against a line-by-line
transcription of the loop), and never builds the (reports, images, words, dim) tensor of
attended contexts: ``cos(e_w, c_w)`` needs only ``<e_w, c_w> = sum_r a_wr s_wr`` and
``|c_w|^2 = a_w^T G a_w`` with ``G = V V^T`` the image's region Gram matrix.
"""
from __future__ import annotations

import re
from typing import NamedTuple

import torch
import torch.nn.functional as F

# GLoRIA's temperatures (configs/*gloria*.yaml: temp1, temp2, temp3).
GLORIA_ATTENTION_TEMPERATURE = 4.0    # sharpens the attention over regions
GLORIA_SIMILARITY_TEMPERATURE = 5.0   # aggregates the words: log-sum-exp of 5 * cosine
GLORIA_LOGIT_SCALE = 10.0             # multiplies the report-image similarities (local and global loss)

_WORD_CHARACTER = re.compile(r"\w")


def _shape(x) -> str:
    """A tensor's shape, or the type of whatever was passed instead, for error messages."""
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


# --------------------------------------------------------------------------- words from word pieces
def subword_tables(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Two lookup tables over the tokenizer's vocabulary, indexed by token id.

    ``continues[id]``: the token continues the previous word (WordPiece's ``##`` prefix).
    ``dropped[id]``: the token is no part of any word: a special token ([CLS], [SEP],
    [PAD], ...) or punctuation (no letter or digit in it, GLoRIA's ``\\w+`` rule).
    """
    if not hasattr(tokenizer, "convert_ids_to_tokens") or not hasattr(tokenizer, "all_special_ids"):
        raise TypeError(f"expected a Hugging Face tokenizer (e.g. from medmm_lite.data.train_tokenizer), "
                        f"got {type(tokenizer).__name__}")
    size = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    continues = torch.tensor([t.startswith("##") for t in tokens], dtype=torch.bool)
    dropped = torch.tensor([_WORD_CHARACTER.search(t.removeprefix("##")) is None for t in tokens],
                           dtype=torch.bool)
    dropped[list(tokenizer.all_special_ids)] = True
    return continues, dropped


def word_ids(input_ids: torch.Tensor, tokenizer_or_tables, attention_mask: torch.Tensor | None = None):
    """The word each token belongs to, (B, L) long: 0, 1, 2, ... in reading order, -1 for tokens
    that belong to no word (special tokens, punctuation, padding).

    ``tokenizer_or_tables``: the tokenizer that made ``input_ids``, or its :func:`subword_tables`.
    Vectorised over the batch: a new word starts at every kept token without ``##``.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        raise ValueError(f"input_ids must be a (B, L) tensor of token ids, got "
                         f"{_shape(input_ids)}")
    if isinstance(tokenizer_or_tables, tuple):
        continues, dropped = tokenizer_or_tables
    else:
        continues, dropped = subword_tables(tokenizer_or_tables)
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= len(continues)):
        raise ValueError(f"input_ids hold ids outside the tokenizer's vocabulary [0, {len(continues)}): "
                         "were they made by another tokenizer?")
    continues, dropped = continues.to(input_ids.device), dropped.to(input_ids.device)
    ids = input_ids.long()
    drop = dropped[ids]
    if attention_mask is not None:
        drop = drop | ~attention_mask.bool()
    starts = ~continues[ids] & ~drop
    index = starts.long().cumsum(dim=1) - 1          # the word started most recently
    # a continuation with no word before it (a report truncated mid-word at the front) belongs nowhere
    return torch.where(drop | (index < 0), torch.full_like(index, -1), index)


def merge_subwords(token_features: torch.Tensor, input_ids: torch.Tensor, tokenizer_or_word_ids,
                   attention_mask: torch.Tensor | None = None):
    """Average the word-piece features of each word into one word feature.

    Args:
        token_features: (B, L, D) the text encoder's per-token outputs.
        input_ids: (B, L) the token ids they came from.
        tokenizer_or_word_ids: the tokenizer (its ``##`` pieces, specials and punctuation are
            read from the vocabulary), or precomputed (B, L) word ids from :func:`word_ids`.
        attention_mask: (B, L) 1 real / 0 padding (padding is dropped either way, as [PAD]).

    Returns:
        ``(word_features (B, W, D), word_mask (B, W) bool)``, W = the most words in any report
        of the batch; reports with fewer words are padded with zeros and ``word_mask`` False.

    GLoRIA sums the pieces (with BERT features); the mean keeps a word cut into three pieces
    on the same scale as a whole word, and the cosine similarities of the loss ignore scale.
    """
    if not isinstance(token_features, torch.Tensor) or token_features.ndim != 3:
        raise ValueError("token_features must be (B, L, D), the text encoder's per-token outputs; got "
                         f"{_shape(token_features)}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.shape != token_features.shape[:2]:
        raise ValueError(f"input_ids must be (B, L) = {tuple(token_features.shape[:2])} like token_features, got "
                         f"{_shape(input_ids)}")
    if isinstance(tokenizer_or_word_ids, torch.Tensor):
        ids = tokenizer_or_word_ids.to(token_features.device).long()
        if ids.shape != input_ids.shape:
            raise ValueError(f"word ids must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(ids.shape)}")
        if attention_mask is not None:
            ids = ids.masked_fill(~attention_mask.to(ids.device).bool(), -1)
    else:
        ids = word_ids(input_ids, tokenizer_or_word_ids, attention_mask).to(token_features.device)
    B, L, D = token_features.shape
    W = max(int(ids.max()) + 1, 1) if ids.numel() else 1
    # Tokens of no word go to an extra slot W, dropped afterwards: one scatter for the whole batch.
    slot = torch.where(ids >= 0, ids, torch.full_like(ids, W))
    sums = token_features.new_zeros(B, W + 1, D).scatter_add(1, slot[..., None].expand(B, L, D), token_features)
    counts = token_features.new_zeros(B, W + 1).scatter_add(1, slot, torch.ones_like(slot, dtype=token_features.dtype))
    sums, counts = sums[:, :W], counts[:, :W]
    word_mask = counts > 0
    return sums / counts.clamp(min=1)[..., None], word_mask


def merged_words(input_ids: torch.Tensor, tokenizer, attention_mask: torch.Tensor | None = None) -> list[list[str]]:
    """The words of each report, in the order :func:`merge_subwords` puts their features
    (pieces glued back together: "at", "##elect", "##asis" -> "atelectasis")."""
    ids = word_ids(input_ids, tokenizer, attention_mask).cpu()
    rows = []
    for row_ids, row_words in zip(input_ids.cpu().tolist(), ids.tolist()):
        tokens = tokenizer.convert_ids_to_tokens(row_ids)
        words: list[str] = []
        for token, w in zip(tokens, row_words):
            if w < 0:
                continue
            if w == len(words):
                words.append(token.removeprefix("##"))
            else:
                words[w] += token.removeprefix("##")
        rows.append(words)
    return rows


# --------------------------------------------------------------------------- attention
def _check_local_inputs(words, regions, word_mask, region_mask, paired: bool):
    if not isinstance(words, torch.Tensor) or words.ndim != 3:
        raise ValueError("word_features must be (B, W, D): one D-vector per word of each report; got "
                         f"{_shape(words)}")
    if not isinstance(regions, torch.Tensor) or regions.ndim != 3:
        hint = " (flatten a (B, D, h, w) map with .flatten(2).transpose(1, 2))" if (
            isinstance(regions, torch.Tensor) and regions.ndim == 4) else ""
        raise ValueError("region_features must be (B, R, D): one D-vector per image region; got "
                         f"{_shape(regions)}{hint}")
    if words.shape[-1] != regions.shape[-1]:
        raise ValueError(f"words have {words.shape[-1]} dims and regions {regions.shape[-1]}: project both into "
                         "the same space first (GLoRIAModel's local projections)")
    if paired and words.shape[0] != regions.shape[0]:
        raise ValueError(f"{words.shape[0]} reports but {regions.shape[0]} images: row b of each must be one pair")
    if word_mask is not None and (not isinstance(word_mask, torch.Tensor) or word_mask.shape != words.shape[:2]):
        raise ValueError(f"word_mask must be (B, W) = {tuple(words.shape[:2])} (True = a real word), got "
                         f"{_shape(word_mask)}")
    if region_mask is not None and (not isinstance(region_mask, torch.Tensor)
                                    or region_mask.shape != regions.shape[:2]):
        raise ValueError(f"region_mask must be (B, R) = {tuple(regions.shape[:2])} (True = a real region), got "
                         f"{_shape(region_mask)}")
    if region_mask is not None and not bool(region_mask.bool().any(dim=1).all()):
        raise ValueError("region_mask hides every region of some image: keep at least one region per image")


ATTENTION_KINDS = ("gloria", "cosine")


def _check_kind(kind) -> None:
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {kind!r}")


def _attention(scores, word_mask, region_mask, temperature: float, word_dim: int, kind: str = "gloria",
               norms=None, zero_masked_words: bool = True):
    """Attention of each word over the regions, from word-region scores.

    ``kind="gloria"``: softmax over the words (per region), times the temperature, softmax over
    the regions (per word), GLoRIA's ``attention_fn``. ``kind="cosine"``: one softmax over the
    regions of temperature * cosine(word, region); ``norms`` = |e_w| |v_r|, broadcastable to
    ``scores``. Masked words take no share of a region (and, with ``zero_masked_words``, get
    all-zero rows); masked regions get zero weight.
    """
    if kind == "gloria":
        if word_mask is not None:
            scores = scores.masked_fill(~word_mask, float("-inf"))
        shares = torch.softmax(scores, dim=word_dim)
        if word_mask is not None and not bool(word_mask.any(dim=word_dim).all()):
            shares = shares.nan_to_num(0.0)  # a report with no words at all: its regions are shared by no one
        logits = temperature * shares
    elif kind == "cosine":
        logits = temperature * scores / norms.clamp(min=1e-8)
    else:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {kind!r}")
    if region_mask is not None:
        logits = logits.masked_fill(~region_mask, float("-inf"))
    attention = torch.softmax(logits, dim=-1)
    if word_mask is not None and zero_masked_words:
        attention = attention.masked_fill(~word_mask, 0.0)
    return attention


def word_region_attention(words: torch.Tensor, regions: torch.Tensor, temperature: float = GLORIA_ATTENTION_TEMPERATURE,
                          word_mask: torch.Tensor | None = None, region_mask: torch.Tensor | None = None,
                          attention: str = "gloria"):
    """Each word of report b attends over the regions of image b (GLoRIA's ``attention_fn``).

    Args:
        words: (B, W, D) word features; regions: (B, R, D) region features (a ViT's patch grid,
            row-major), both in the same projected space.
        temperature: GLoRIA's ``temp1`` = 4.
        word_mask: (B, W) True for real words; region_mask: (B, R) True for real regions.
        attention: ``"gloria"`` (the two softmaxes above) or ``"cosine"`` (one softmax over the
            regions of ``temperature * cos(word, region)``).

    Returns:
        ``(context (B, W, D), attention (B, W, R))``: ``attention[b, w]`` sums to 1 over the
        regions for every real word (all zeros for a masked word); ``context[b, w]`` is the
        attention-weighted mean of image b's regions, what word w "sees".
    """
    _check_kind(attention)
    _check_local_inputs(words, regions, word_mask, region_mask, paired=True)
    wm = None if word_mask is None else word_mask.bool()[:, :, None]        # (B, W, 1)
    rm = None if region_mask is None else region_mask.bool()[:, None, :]    # (B, 1, R)
    scores = words @ regions.transpose(1, 2)                                # (B, W, R)
    norms = words.norm(dim=-1)[:, :, None] * regions.norm(dim=-1)[:, None, :] if attention == "cosine" else None
    weights = _attention(scores, wm, rm, temperature, word_dim=1, kind=attention, norms=norms)
    return weights @ regions, weights


# --------------------------------------------------------------------------- the local loss
class LocalAlignment(NamedTuple):
    """What :func:`local_contrastive_loss` returns.

    ``image_to_text``, ``text_to_image``: the two cross-entropies (GLoRIA's ``loss0``, ``loss1``);
    ``loss`` is their sum. ``similarities`` (B images, B reports): the word-aggregated
    similarity Z before the logit scale. ``attention`` (B, W, R): each report's words over
    its own image's regions (for maps and the pointing game).
    """

    image_to_text: torch.Tensor
    text_to_image: torch.Tensor
    similarities: torch.Tensor
    attention: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        return self.image_to_text + self.text_to_image


def local_similarities(word_features: torch.Tensor, word_mask: torch.Tensor | None, region_features: torch.Tensor,
                       temp_attention: float = GLORIA_ATTENTION_TEMPERATURE,
                       temp_similarity: float = GLORIA_SIMILARITY_TEMPERATURE,
                       region_mask: torch.Tensor | None = None, aggregate: str = "sum", attention: str = "gloria",
                       eps: float = 1e-8):
    """GLoRIA's local similarity of every image with every report, all pairs at once.

    Args:
        word_features (T, W, D), word_mask (T, W): the reports' words (None = all real).
        region_features (I, R, D), region_mask (I, R): the images' regions.
        aggregate: ``"sum"`` (the loss: log-sum-exp over words) or ``"max"`` (GLoRIA's
            retrieval and zero-shot scoring: the best-matching word).
        attention: ``"gloria"`` or ``"cosine"`` (see :func:`word_region_attention`).

    Returns:
        ``(similarities (I, T), attention (I, T, W, R))``; ``attention[i, t]`` holds report
        t's words over image i's regions (rows of padding words are not zeroed here).
    """
    if aggregate not in ("sum", "max"):
        raise ValueError(f"aggregate must be 'sum' (log-sum-exp, the loss) or 'max', got {aggregate!r}")
    _check_kind(attention)
    _check_local_inputs(word_features, region_features, word_mask, region_mask, paired=False)
    if word_mask is not None and not bool(word_mask.bool().any(dim=1).all()):
        empty = int((~word_mask.bool().any(dim=1)).nonzero()[0, 0])
        raise ValueError(f"report {empty} has no words (all masked): every report needs at least one word "
                         "for the local loss; drop empty reports before the loss")
    (T, W, D), (I, R, _) = word_features.shape, region_features.shape
    v = region_features
    # Layout (images, reports, words, regions), built by one batched matmul: every large tensor
    # below is contiguous and every reduction runs over its last or its words axis.
    scores = (word_features.reshape(T * W, D) @ v.reshape(I * R, D).t()).view(T, W, I, R).permute(2, 0, 1, 3)
    scores = scores.contiguous()
    wm = None if word_mask is None else word_mask.bool()[None, :, :, None]      # (1, T, W, 1)
    rm = None if region_mask is None else region_mask.bool()[:, None, None, :]  # (I, 1, 1, R)
    word_norm = word_features.norm(dim=-1)                                      # (T, W)
    norms = (word_norm[None, :, :, None] * v.norm(dim=-1)[:, None, None, :]) if attention == "cosine" else None
    weights = _attention(scores, wm, rm, temp_attention, word_dim=2, kind=attention, norms=norms,
                         zero_masked_words=False)                               # (I, T, W, R)
    # cos(e_w, c_w) without building c_w = sum_r a_wr v_r: <e_w, c_w> = sum_r a_wr s_wr, |c_w|^2 = a^T (V V^T) a
    dot = (weights * scores).sum(-1)                                            # (I, T, W)
    gram = v @ v.transpose(1, 2)                                                # (I, R, R)
    flat = weights.reshape(I, T * W, R)
    context_sq = (torch.bmm(flat, gram) * flat).sum(-1).view(I, T, W)
    norms = word_norm[None] * context_sq.clamp(min=eps * eps).sqrt()
    scaled = temp_similarity * dot / norms.clamp(min=eps)                       # (I, T, W)
    if word_mask is not None:
        scaled = scaled.masked_fill(~word_mask.bool()[None], float("-inf"))
    z = torch.logsumexp(scaled, dim=-1) if aggregate == "sum" else scaled.amax(dim=-1)   # (I, T)
    return z, weights


def local_contrastive_loss(word_features: torch.Tensor, word_mask: torch.Tensor | None,
                           region_features: torch.Tensor, temp_attention: float = GLORIA_ATTENTION_TEMPERATURE,
                           temp_similarity: float = GLORIA_SIMILARITY_TEMPERATURE,
                           temp_loss: float = GLORIA_LOGIT_SCALE,
                           region_mask: torch.Tensor | None = None, attention: str = "gloria") -> LocalAlignment:
    """GLoRIA's local loss in both directions, for a batch of B matching report-image pairs.

    Args:
        word_features: (B, W, D) the reports' word features (:func:`merge_subwords`, projected).
        word_mask: (B, W) True for real words (None: every word is real).
        region_features: (B, R, D) the images' region features (patch tokens, projected).
        temp_attention, temp_similarity, temp_loss: GLoRIA's temp1 = 4, temp2 = 5, temp3 = 10.
        region_mask: (B, R) True for real regions (None: all).
        attention: ``"gloria"`` (GLoRIA's two softmaxes) or ``"cosine"`` (see :func:`word_region_attention`).

    Returns:
        :class:`LocalAlignment`; ``.loss`` = image->text + text->image, as GLoRIA sums them.
    """
    _check_local_inputs(word_features, region_features, word_mask, region_mask, paired=True)
    if word_features.shape[0] < 2:
        raise ValueError("a contrastive loss needs at least 2 pairs in the batch (the others are the negatives)")
    similarities, weights = local_similarities(word_features, word_mask, region_features, temp_attention,
                                               temp_similarity, region_mask, attention=attention)
    logits = temp_loss * similarities                    # rows: images, columns: reports
    targets = torch.arange(logits.shape[0], device=logits.device)
    own = weights.diagonal(dim1=0, dim2=1).permute(2, 0, 1)     # (B, W, R): report b over image b
    if word_mask is not None:
        own = own * word_mask[..., None].to(own.dtype)
    return LocalAlignment(F.cross_entropy(logits, targets), F.cross_entropy(logits.t(), targets),
                          similarities, own)


__all__ = ["GLORIA_ATTENTION_TEMPERATURE", "GLORIA_SIMILARITY_TEMPERATURE", "GLORIA_LOGIT_SCALE",
           "subword_tables", "word_ids", "merge_subwords", "merged_words", "word_region_attention",
           "local_similarities", "local_contrastive_loss", "LocalAlignment", "ATTENTION_KINDS"]
