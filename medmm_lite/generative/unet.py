"""A small U-Net: the network behind both image generators of lesson 06.

    x (B, C, H, W) --conv--> [ResBlock, down] x levels --> middle (ResBlock, attention, ResBlock)
                   <-- [concat skip, ResBlock, up] x levels <-- --norm, SiLU, conv--> (B, C_out, H, W)

* **Diffusion** (:mod:`medmm_lite.generative.diffusion`) gives it the noise level: the
  step ``t`` becomes a sinusoidal embedding (as a transformer's positions), then an MLP;
  a condition embedding (a finding vector, a report) is *added* to it, and every
  residual block adds a linear projection of that sum to its feature maps (DDPM's
  "time embedding in every block"). The network predicts the noise, same shape as x.
* **Image-to-image translation** (:mod:`medmm_lite.generative.translation`) uses the same
  network without any embedding (``time_embedding=False``): T1 in, T2 out.

Skip connections carry the fine detail from the encoder straight to the decoder, so the
bottleneck only has to decide *what* goes where, not redraw every edge. Attention, when
asked for, runs at the lowest resolution only (where there are few positions) through
``F.scaled_dot_product_attention``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (integer or float) steps ``t`` (B,) -> (B, dim), as in DDPM.

    Half the channels are ``cos(t * f_k)``, half ``sin(t * f_k)``, with frequencies
    ``f_k = max_period ** (-k / (dim/2))``: nearby steps get similar vectors, far ones
    different, and the MLP after it can read off any smooth function of t.
    """
    if t.ndim != 1:
        raise ValueError(f"t must be a 1-D tensor of steps (B,), got shape {tuple(t.shape)}")
    if dim % 2:
        raise ValueError(f"dim must be even (half cos, half sin), got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + projection of the embedding (if any), GroupNorm-SiLU-dropout-conv, + skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int | None, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch) if emb_dim else None
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)   # each block starts as the identity (through its skip)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, emb=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is not None:
            h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels={channels} must be divisible by heads={heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)            # (B, heads, HW, C/heads)
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


class UNet(nn.Module):
    """A U-Net for small single-channel images.

    Args:
        image_size: the side of the (square) images it takes; must be divisible by
            ``2 ** (len(channel_mults) - 1)``. Inputs of another size are refused.
        in_chans, out_chans: input and output channels (1 for X-rays and MRI).
        base_channels: channels at full resolution; level ``i`` has ``base_channels * channel_mults[i]``.
        channel_mults: one entry per resolution; the image is halved between levels.
        time_embedding: take a step ``t`` (diffusion). Off for image-to-image translation.
        cond_dim: width of an extra embedding added to the step's (diffusion conditioning);
            ``None`` means the network takes no condition. Requires ``time_embedding``.
        attention: self-attention in the middle (the lowest resolution).
        dropout: inside the residual blocks.

    ``forward(x, t=None, cond_emb=None)`` -> (B, out_chans, H, W). ``t`` (B,) integer steps
    when ``time_embedding``; ``cond_emb`` (B, cond_dim) an already-embedded condition.
    """

    def __init__(self, image_size: int, in_chans: int = 1, out_chans: int = 1, base_channels: int = 32,
                 channel_mults: tuple[int, ...] = (1, 2, 2), time_embedding: bool = True,
                 cond_dim: int | None = None, attention: bool = False, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        levels = len(channel_mults)
        if levels < 1 or any(int(m) < 1 for m in channel_mults):
            raise ValueError(f"channel_mults must be a non-empty tuple of positive ints, got {channel_mults!r}")
        factor = 2 ** (levels - 1)
        if not isinstance(image_size, int) or image_size < factor or image_size % factor:
            raise ValueError(f"image_size={image_size!r} must be a positive multiple of {factor} "
                             f"(the U-Net halves it {levels - 1} times); pick channel_mults with fewer levels")
        if cond_dim is not None and not time_embedding:
            raise ValueError("cond_dim needs time_embedding=True: the condition is added to the step's embedding")
        self.image_size, self.in_chans, self.out_chans = image_size, in_chans, out_chans
        self.base_channels, self.channel_mults = base_channels, tuple(int(m) for m in channel_mults)
        self.cond_dim = cond_dim
        emb_dim = 4 * base_channels if time_embedding else None
        self.emb_dim = emb_dim
        if time_embedding:
            self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        else:
            self.time_mlp = None
        self.cond_proj = nn.Linear(cond_dim, emb_dim) if cond_dim is not None else None

        widths = [base_channels * m for m in self.channel_mults]
        self.stem = nn.Conv2d(in_chans, base_channels, 3, padding=1)
        self.down_blocks, self.downsample = nn.ModuleList(), nn.ModuleList()
        ch = base_channels
        for i, w in enumerate(widths):
            self.down_blocks.append(ResBlock(ch, w, emb_dim, dropout))
            ch = w
            self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1) if i < levels - 1 else nn.Identity())
        self.mid1 = ResBlock(ch, ch, emb_dim, dropout)
        self.mid_attn = SelfAttention2d(ch, heads) if attention else nn.Identity()
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout)
        self.up_blocks, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(levels)):
            w = widths[i]
            self.up_blocks.append(ResBlock(ch + w, w, emb_dim, dropout))   # concat with the skip of this level
            ch = w
            self.upsample.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                               nn.Conv2d(ch, widths[i - 1], 3, padding=1)) if i > 0 else nn.Identity())
            if i > 0:
                ch = widths[i - 1]
        self.out_norm = nn.GroupNorm(_groups(ch), ch)
        self.out_conv = nn.Conv2d(ch, out_chans, 3, padding=1)

    def check_input(self, x, t=None, cond_emb=None):
        s = self.image_size
        if (not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.in_chans
                or tuple(x.shape[2:]) != (s, s)):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"UNet expected images of shape (B, {self.in_chans}, {s}, {s}), got {got}; "
                             f"build the UNet with image_size matching your images")
        if not x.is_floating_point():
            raise ValueError(f"UNet expected a float tensor, got {x.dtype}")
        if self.time_mlp is not None:
            if t is None or not isinstance(t, torch.Tensor) or t.shape != (x.shape[0],):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else t
                raise ValueError(f"UNet with a time embedding needs t of shape ({x.shape[0]},), got {got}")
        elif t is not None:
            raise ValueError("this UNet was built with time_embedding=False; do not pass t")
        if cond_emb is not None:
            if self.cond_proj is None:
                raise ValueError("this UNet was built without cond_dim; it takes no condition")
            if cond_emb.shape != (x.shape[0], self.cond_dim):
                raise ValueError(f"cond_emb must have shape ({x.shape[0]}, {self.cond_dim}), "
                                 f"got {tuple(cond_emb.shape)}")

    def forward(self, x, t=None, cond_emb=None):
        self.check_input(x, t, cond_emb)
        emb = None
        if self.time_mlp is not None:
            emb = self.time_mlp(timestep_embedding(t, self.base_channels).to(x.dtype))
            if cond_emb is not None:
                emb = emb + self.cond_proj(cond_emb)
        h = self.stem(x)
        skips = []
        for block, down in zip(self.down_blocks, self.downsample):
            h = block(h, emb)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for block, up in zip(self.up_blocks, self.upsample):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            h = up(h)
        return self.out_conv(F.silu(self.out_norm(h)))


__all__ = ["UNet", "ResBlock", "SelfAttention2d", "timestep_embedding"]
