"""Text transformers: a bidirectional encoder (BERT-like) and a causal decoder (GPT-like).

Both are token embedding + learned position embedding -> pre-norm blocks ->
final LayerNorm (the GPT-2 / CLIP-text layout, not BERT's post-norm).

* :class:`TextEncoder` reads a whole report at once: every token sees every
  other real token (padding is masked out of the keys). The first token's output
  (the tokenizer's [CLS]) is the report's global embedding (ConVIRT, GLoRIA, CLIP).
* :class:`TextDecoder` writes a report one token at a time: token t sees only
  tokens <= t (a causal mask). With ``cross_attention=True`` each block also
  attends to a ``context`` such as image region features (encoder-decoder
  captioning, CoCa); with ``prefix_embeds`` it reads projected image tokens
  before the text (the LLaVA recipe). A KV cache makes generation cost one token
  per step (see ``generation.py``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import Block, LayerCache, init_transformer_weights
from .generation import generate


class TextFeatures(NamedTuple):
    """``global_features`` (B, dim): the first token's output; ``token_features`` (B, L, dim)."""

    global_features: torch.Tensor
    token_features: torch.Tensor


class DecoderOutput(NamedTuple):
    """``logits`` (B, L, vocab); ``past_key_values`` (one :class:`LayerCache` per block,
    or None without ``use_cache``); ``hidden_states`` (B, L, dim), the final-normed outputs."""

    logits: torch.Tensor
    past_key_values: tuple[LayerCache, ...] | None
    hidden_states: torch.Tensor


def check_token_ids(input_ids, name: str, vocab_size: int, max_len: int, past_len: int = 0,
                    extra_len: int = 0) -> None:
    """Raise a ValueError that says what is wrong with ``input_ids`` and how to fix it."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"{name} expected input_ids of shape (B, L), got {shape}; "
                         "for one text use input_ids[None] (or the tokenizer's return_tensors='pt')")
    if input_ids.dtype not in (torch.long, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"{name} expected integer token ids, got {input_ids.dtype}")
    length = past_len + extra_len + input_ids.shape[1]
    if length > max_len:
        what = f"got {input_ids.shape[1]} tokens"
        if past_len or extra_len:
            what += f" after {past_len + extra_len} earlier positions (total {length})"
        raise ValueError(f"{name}: {what}, the model's context is {max_len}; "
                         "truncate with the tokenizer's max_length (or build the model with a larger max_len)")
    if input_ids.numel():
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab_size:
            bad = high if high >= vocab_size else low
            raise ValueError(f"{name}: token id {bad} is outside the vocabulary [0, {vocab_size}); "
                             "was the tokenizer trained with a different vocab_size than the model?")


def _check_sizes(name: str, **sizes) -> None:
    """Sizes are positive ints (``depth`` may be 0: embeddings and the final norm only). A zero or
    negative size used to build a model that fails later, far from the cause, or not at all."""
    for key, value in sizes.items():
        smallest = 0 if key == "depth" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
            hint = " (the longest input in tokens, e.g. the tokenizer's max_length)" if key == "max_len" else ""
            raise ValueError(f"{name}: {key} must be an int >= {smallest}{hint}, got {value!r}")
    if sizes["dim"] % sizes["heads"]:
        raise ValueError(f"{name}: dim={sizes['dim']} must be divisible by heads={sizes['heads']} (each head gets "
                         "dim // heads channels)")


def check_mask(mask, shape, name: str, what: str) -> torch.Tensor:
    """``mask`` (1 real, 0 padding) as a bool tensor, after checking it has ``shape``; ``name`` and ``what``
    say whose and which mask in the error."""
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(shape):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name} expected {what} of shape {tuple(shape)} (1 = real, 0 = padding), got {got}")
    return mask.bool()


class TextEncoder(nn.Module):
    """Bidirectional transformer text encoder.

    Args:
        vocab_size, dim, depth, heads: vocabulary, width, blocks, attention heads.
        max_len: the longest input (positions are learned, one per index).
        pad_id: the padding token's id; used to build the mask when none is given.
        mlp_ratio: MLP hidden width / dim.

    ``forward(input_ids (B, L), attention_mask=None)`` -> :class:`TextFeatures`.
    ``attention_mask`` (B, L): 1 for real tokens, 0 for padding; None means
    ``input_ids != pad_id``. Padding never changes the real tokens' outputs.

    Compared with ``transformers.BertModel`` of the same config, the encoder has
    no token-type embeddings and no pooler, and moves the embedding LayerNorm to
    the end (pre-norm); the tests check the parameter counts agree after that.
    """

    def __init__(self, vocab_size: int, dim: int, depth: int, heads: int, max_len: int, pad_id: int = 0,
                 mlp_ratio: float = 4.0):
        super().__init__()
        _check_sizes("TextEncoder", vocab_size=vocab_size, dim=dim, depth=depth, heads=heads, max_len=max_len)
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id={pad_id} must be a token id in [0, vocab_size={vocab_size})")
        self.vocab_size, self.dim, self.max_len, self.pad_id = vocab_size, dim, max_len, pad_id
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.apply(init_transformer_weights)

    def forward(self, input_ids, attention_mask=None) -> TextFeatures:
        check_token_ids(input_ids, "TextEncoder", self.vocab_size, self.max_len)
        B, L = input_ids.shape
        if attention_mask is None:
            real = input_ids != self.pad_id
        else:
            real = check_mask(attention_mask, (B, L), "TextEncoder", "attention_mask")
        mask = None
        if not bool(real.all()):
            if not bool(real.any(dim=1).all()):
                raise ValueError("TextEncoder: a text in the batch is all padding; every text needs at least "
                                 "one real token (the tokenizer adds [CLS]/[SEP] even to an empty string)")
            mask = real[:, None, None, :]  # (B, 1, 1, L): every query may attend to every real key
        positions = torch.arange(L, device=input_ids.device)
        x = self.token_embed(input_ids) + self.pos_embed(positions)
        for block in self.blocks:
            x = block(x, attn_mask=mask)
        x = self.norm(x)
        return TextFeatures(x[:, 0], x)


class TextDecoder(nn.Module):
    """Causal transformer language model, optionally conditioned on a context.

    Args:
        vocab_size, dim, depth, heads, max_len: as for :class:`TextEncoder`.
        cross_attention: add a cross-attention sub-layer to every block, over a
            ``context`` (B, N, context_dim), e.g. image region features.
        context_dim: the context's width (default ``dim``).
        pad_id: padding id; its target positions are ignored by :meth:`loss`.
        tie_weights: share the token embedding with the output head (GPT-2, saves vocab*dim parameters).
        mlp_ratio: MLP hidden width / dim.

    ``forward(input_ids, context=None, context_mask=None, attention_mask=None,
    past_key_values=None, use_cache=False, prefix_embeds=None)`` -> :class:`DecoderOutput`.

    * ``attention_mask`` (B, S) over every key position (past + prefix + new tokens),
      1 real / 0 padding, combined with the causal mask. Right padding (the usual
      training batch) needs no mask at all: causality already hides later pads.
    * ``past_key_values`` from an earlier call with ``use_cache=True``: only the new
      tokens are fed and their positions continue after the cached ones. The cache
      also holds the context's cross-attention keys/values, so later calls may omit
      ``context`` (pass ``context_mask`` every time if there is one).
    * ``prefix_embeds`` (B, P, dim): vectors placed before the tokens (LLaVA's projected
      image tokens); the outputs then cover P + L positions.
    """

    def __init__(self, vocab_size: int, dim: int, depth: int, heads: int, max_len: int,
                 cross_attention: bool = False, context_dim: int | None = None, pad_id: int = 0,
                 tie_weights: bool = True, mlp_ratio: float = 4.0):
        super().__init__()
        _check_sizes("TextDecoder", vocab_size=vocab_size, dim=dim, depth=depth, heads=heads, max_len=max_len)
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id={pad_id} must be a token id in [0, vocab_size={vocab_size})")
        if context_dim is not None and not cross_attention:
            raise ValueError("context_dim is only used with cross_attention=True")
        self.vocab_size, self.dim, self.depth, self.max_len, self.pad_id = vocab_size, dim, depth, max_len, pad_id
        self.cross_attention = cross_attention
        self.context_dim = (context_dim or dim) if cross_attention else None
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList([
            Block(dim, heads, mlp_ratio, cross_attention=cross_attention, context_dim=context_dim)
            for _ in range(depth)
        ])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.apply(init_transformer_weights)
        # GPT-2: the projections that write into the residual stream start smaller, by
        # 1/sqrt(2*depth), so the stream's variance does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.fc2.weight")):
                nn.init.trunc_normal_(param, std=0.02 / math.sqrt(2 * depth))
        if tie_weights:
            self.lm_head.weight = self.token_embed.weight

    # -- masks -----------------------------------------------------------------

    def _self_attention_mask(self, B, T, past_len, attention_mask, device):
        """(attn_mask, is_causal) for T new queries over past_len + T keys."""
        total = past_len + T
        if attention_mask is None:
            if past_len == 0:
                return None, T > 1          # SDPA's own (fast) causal mask
            if T == 1:
                return None, False          # one new token may see everything before it
        # query i sits at absolute position past_len + i and may see keys j <= past_len + i
        query_pos = torch.arange(T, device=device)[:, None] + past_len
        key_pos = torch.arange(total, device=device)[None, :]
        mask = (key_pos <= query_pos)[None, None]                            # (1, 1, T, S)
        if attention_mask is not None:
            real = check_mask(attention_mask, (B, total), "TextDecoder", "attention_mask (past + new positions)")
            # a padded query that sees no real key would get NaN (softmax over nothing), and a NaN
            # value times a zero attention weight is still NaN in later layers: let it see itself
            mask = (mask & real[:, None, None, :]) | (key_pos == query_pos)[None, None]
        return mask, False

    # -- forward ---------------------------------------------------------------

    def forward(self, input_ids, context=None, context_mask=None, attention_mask=None,
                past_key_values=None, use_cache: bool = False, prefix_embeds=None) -> DecoderOutput:
        past_len = past_key_values[0].key.shape[2] if past_key_values else 0
        prefix_len = 0 if prefix_embeds is None else prefix_embeds.shape[1]
        check_token_ids(input_ids, "TextDecoder", self.vocab_size, self.max_len, past_len, prefix_len)
        B, L = input_ids.shape
        if past_key_values is not None and len(past_key_values) != len(self.blocks):
            raise ValueError(f"past_key_values has {len(past_key_values)} layers, the decoder {len(self.blocks)}")
        self._check_context(context, context_mask, B, cached=past_len > 0)

        x = self.token_embed(input_ids)
        if prefix_embeds is not None:
            if prefix_embeds.ndim != 3 or prefix_embeds.shape[0] != B or prefix_embeds.shape[2] != self.dim:
                raise ValueError(f"prefix_embeds must be (B={B}, P, dim={self.dim}), got {tuple(prefix_embeds.shape)}")
            x = torch.cat([prefix_embeds.to(x.dtype), x], dim=1)
            if attention_mask is not None and past_len == 0 and attention_mask.shape[-1] == L:
                attention_mask = torch.cat([attention_mask.new_ones(B, prefix_len), attention_mask], dim=1)
        T = x.shape[1]
        x = x + self.pos_embed(torch.arange(past_len, past_len + T, device=x.device))
        attn_mask, is_causal = self._self_attention_mask(B, T, past_len, attention_mask, x.device)

        presents = []
        for i, block in enumerate(self.blocks):
            past = past_key_values[i] if past_key_values is not None else None
            out = block(x, attn_mask=attn_mask, is_causal=is_causal, context=context,
                        context_mask=context_mask, past=past, use_cache=use_cache)
            if use_cache:
                x, present = out
                presents.append(present)
            else:
                x = out
        hidden = self.norm(x)
        return DecoderOutput(self.lm_head(hidden), tuple(presents) if use_cache else None, hidden)

    def _check_context(self, context, context_mask, B, cached):
        if not self.cross_attention:
            if context is not None:
                raise ValueError("this TextDecoder was built without cross_attention, so it cannot use a "
                                 "context; build it with cross_attention=True (or pass prefix_embeds)")
            return
        if context is None:
            if not cached:
                raise ValueError(f"this TextDecoder has cross-attention and needs context of shape "
                                 f"(B, N, {self.context_dim}), e.g. image local features; got None")
            return
        if context.ndim != 3 or context.shape[0] != B or context.shape[2] != self.context_dim:
            raise ValueError(f"context must be (B={B}, N, context_dim={self.context_dim}), got {tuple(context.shape)}")
        if context_mask is not None:
            real = check_mask(context_mask, context.shape[:2], "TextDecoder", "context_mask")
            if not bool(real.any(dim=1).all()):
                raise ValueError("context_mask hides every context entry of some sample; keep at least one")

    # -- training --------------------------------------------------------------

    def loss(self, input_ids, context=None, context_mask=None, attention_mask=None, labels=None,
             ignore_index: int = -100, prefix_embeds=None) -> torch.Tensor:
        """Teacher-forced next-token cross-entropy (mean over counted targets).

        Position t predicts token t+1 of ``input_ids`` (the first token, the start
        token, is never a target). Targets at padding (``attention_mask == 0``, or
        ``input_ids == pad_id`` without a mask) are ignored. ``labels`` (B, L), if
        given, replaces ``input_ids`` as the targets, with ``ignore_index`` where no
        loss is wanted (LLaVA: everything except the answer). With ``prefix_embeds``
        the prefix positions are inputs only.
        """
        out = self(input_ids, context=context, context_mask=context_mask,
                   attention_mask=attention_mask, prefix_embeds=prefix_embeds)
        prefix_len = 0 if prefix_embeds is None else prefix_embeds.shape[1]
        if labels is None:
            pad = (attention_mask == 0) if attention_mask is not None else input_ids == self.pad_id
            if attention_mask is not None and attention_mask.shape[1] != input_ids.shape[1]:
                pad = pad[:, -input_ids.shape[1]:]
            labels = input_ids.masked_fill(pad, ignore_index)
        elif labels.shape != input_ids.shape:
            raise ValueError(f"labels must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(labels.shape)}")
        logits = out.logits[:, prefix_len:-1]          # position t predicts token t+1
        targets = labels[:, 1:]
        if not bool((targets != ignore_index).any()):
            raise ValueError("every target is ignored (all padding or ignore_index); nothing to learn from")
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index)

    # -- generation ------------------------------------------------------------

    @torch.no_grad()
    def generate(self, context=None, **kwargs):
        """``generation.generate(self, context, **kwargs)``: greedy, sampling or beam search."""
        return generate(self, context, **kwargs)
