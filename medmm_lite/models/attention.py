"""The transformer pieces every model in the course shares: attention, MLP, block.

One pre-norm block serves the ViT, the bidirectional text encoder and the causal
text decoder (with an optional cross-attention sub-layer over image features):

    x = x + self_attention(norm1(x))            # attn_mask / is_causal / KV cache
    x = x + cross_attention(norm_cross(x), ctx)   # decoders with cross_attention=True
    x = x + mlp(norm2(x))

Parameter names (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``,
``mlp.fc2``) are those of timm's ``VisionTransformer``, so a timm state dict loads
into our ViT and the tests can prove both compute the same function.

Attention runs through ``F.scaled_dot_product_attention`` (SDPA), which picks a
fused kernel (flash / memory-efficient / CPU-fused) where one applies. Masks follow
SDPA's convention: a boolean ``attn_mask`` is True where a query MAY attend.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerCache(NamedTuple):
    """What one decoder block remembers between generation steps.

    ``key``/``value``: (B, heads, T_past, head_dim), the self-attention keys and values
    of every token seen so far, so a new token attends to them without recomputing.
    ``cross_key``/``cross_value``: (B, heads, N_context, head_dim), the cross-attention
    keys and values of the (fixed) context, computed once at the first step; None for
    blocks without cross-attention.
    """

    key: torch.Tensor
    value: torch.Tensor
    cross_key: torch.Tensor | None = None
    cross_value: torch.Tensor | None = None


def _check_heads(dim: int, heads: int) -> int:
    for name, value in (("dim", dim), ("heads", heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if dim % heads != 0:
        raise ValueError(f"dim={dim} must be divisible by heads={heads} (each head gets dim // heads channels)")
    return dim // heads


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (as in timm and nanoGPT).

    ``forward(x, attn_mask=None, is_causal=False, past=None, use_cache=False)``:
    ``x`` (B, L, dim). ``attn_mask`` is a boolean (B or 1, 1, L, L_total) mask, True =
    may attend; ``is_causal`` lets SDPA build the lower-triangular mask itself (only
    valid without a cache, where query i and key i are the same token). ``past`` is a
    (key, value) pair from earlier steps; the new keys/values are appended to it. With
    ``use_cache`` the method returns ``(out, (key, value))`` instead of ``out``.
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.head_dim = _check_heads(dim, heads)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, attn_mask=None, is_causal=False, past=None, use_cache=False):
        B, L, C = x.shape
        # one matmul for q, k and v, then each (B, L, C) -> (B, heads, L, head_dim). Splitting
        # along the channels before the head reshape has the cheapest backward on CPU.
        q, k, v = (t.view(B, L, self.heads, self.head_dim).transpose(1, 2) for t in self.qkv(x).split(C, dim=-1))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        out = self.proj(out.transpose(1, 2).reshape(B, L, C))
        return (out, (k, v)) if use_cache else out


class CrossAttention(nn.Module):
    """Multi-head attention from text tokens (queries) to a context, e.g. image regions.

    Queries come from ``x`` (B, L, dim); keys and values from ``context``
    (B, N, context_dim), projected to ``dim`` by one fused ``kv`` Linear.
    ``context_mask`` (B, N) marks real context entries (True/1) so padded ones are
    ignored. During generation the context never changes, so ``kv`` (the projected
    keys and values) can be passed in instead of ``context`` to skip recomputing them.
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.head_dim = _check_heads(dim, heads)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(context_dim or dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def project_context(self, context):
        """(B, N, context_dim) -> key, value, each (B, heads, N, head_dim)."""
        B, N, _ = context.shape
        dim = self.heads * self.head_dim
        return tuple(t.view(B, N, self.heads, self.head_dim).transpose(1, 2) for t in self.kv(context).split(dim, dim=-1))

    def forward(self, x, context=None, context_mask=None, kv=None):
        B, L, C = x.shape
        k, v = kv if kv is not None else self.project_context(context)
        q = self.q(x).view(B, L, self.heads, self.head_dim).transpose(1, 2)
        mask = None
        if context_mask is not None:
            mask = context_mask.bool()[:, None, None, :]  # (B, 1, 1, N): same for every head and query
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, L, C)), (k, v)


class MLP(nn.Module):
    """The position-wise feed-forward net: Linear -> GELU -> Linear (timm's ``Mlp``)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()  # exact (erf) GELU, as in timm, BERT and GPT-2's reference
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for a whole sample with
    probability ``p`` and scale the survivors by 1/(1-p), so the expectation is unchanged."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop_path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self):
        return f"p={self.p}"


class Block(nn.Module):
    """A pre-norm transformer block, optionally with cross-attention.

    ``forward(x, attn_mask=None, is_causal=False, context=None, context_mask=None,
    past=None, use_cache=False)`` returns ``x`` or, with ``use_cache``,
    ``(x, LayerCache)``. LayerNorm's eps is 1e-6 as in timm's ViT.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, cross_attention: bool = False, context_dim: int | None = None,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, heads, qkv_bias=qkv_bias)
        if cross_attention:
            self.norm_cross = nn.LayerNorm(dim, eps=norm_eps)
            self.cross_attn = CrossAttention(dim, heads, context_dim=context_dim, qkv_bias=qkv_bias)
        else:
            self.cross_attn = None
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x, attn_mask=None, is_causal=False, context=None, context_mask=None,
                past: LayerCache | None = None, use_cache: bool = False):
        self_past = (past.key, past.value) if past is not None else None
        attn_out = self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal,
                             past=self_past, use_cache=use_cache)
        if use_cache:
            attn_out, (key, value) = attn_out
        x = x + self.drop_path(attn_out)

        cross_kv = None
        if self.cross_attn is not None:
            cached = past is not None and past.cross_key is not None
            if context is None and not cached:
                raise ValueError("this block has cross-attention, so it needs a context "
                                 "(B, N, context_dim), e.g. image features; got context=None")
            kv = (past.cross_key, past.cross_value) if cached else None
            cross_out, cross_kv = self.cross_attn(self.norm_cross(x), context, context_mask, kv=kv)
            x = x + self.drop_path(cross_out)

        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if not use_cache:
            return x
        cross_key, cross_value = cross_kv if cross_kv is not None else (None, None)
        return x, LayerCache(key, value, cross_key, cross_value)


def init_transformer_weights(module: nn.Module) -> None:
    """timm / MAE initialisation: Linear and Embedding weights ~ trunc_normal(std 0.02),
    biases 0, LayerNorm weight 1 and bias 0. Apply with ``model.apply(...)``."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, std=0.02)  # cut at +-2 (absolute), as timm's
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
