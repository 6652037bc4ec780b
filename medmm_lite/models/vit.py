"""The Vision Transformer (ViT) image encoder, and the patch helpers MAE needs.

An image is cut into p x p patches; each patch becomes a token (one strided
convolution is exactly "flatten each patch, multiply by a matrix"); a learned
[CLS] token is prepended; positions are added; pre-norm transformer blocks mix
the tokens; a final LayerNorm. The [CLS] output (or the mean of the patch tokens)
is the image's global embedding; the patch tokens, on their (h, w) grid, are its
local features (for GLoRIA's word-region attention, MAE and the VLM projector).

The module is the same function as timm's ``VisionTransformer(..., num_classes=0,
class_token=True, global_pool="token")``: same parameters, same names, same
outputs (tests/test_models.py loads timm's weights and compares).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn

from .attention import Block, init_transformer_weights


class ImageFeatures(NamedTuple):
    """What every image encoder returns.

    ``global_features`` (B, dim): one vector per image (for CLIP, probes, classifiers).
    ``local_features`` (B, n_regions, local_dim): one vector per region, regions in
    row-major order on the encoder's ``grid_size`` (h, w) grid.
    """

    global_features: torch.Tensor
    local_features: torch.Tensor


def pair(size) -> tuple[int, int]:
    """An image size as ``(h, w)``: an int ``n`` is ``(n, n)``."""
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"a size must be an int or an (h, w) pair, got {size}")
    return size


def check_images(images, name: str, in_chans: int, image_size: tuple[int, int] | None = None,
                 multiple_of: int = 1) -> None:
    """Raise a ValueError that says what was expected when ``images`` is not (B, C, H, W) float."""
    shown_size = f"{image_size[0]}, {image_size[1]}" if image_size else "H, W"
    expected = f"(B, {in_chans}, {shown_size})"
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} expected a torch.Tensor of shape {expected}, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != in_chans or (image_size and tuple(images.shape[2:]) != image_size):
        hint = " (add a channel axis with images.unsqueeze(1))" if images.ndim == 3 else ""
        raise ValueError(f"{name} expected images of shape {expected}, got {tuple(images.shape)}{hint}")
    if not images.is_floating_point():
        raise ValueError(f"{name} expected a float tensor, got {images.dtype}; convert with images.float() "
                         "(and divide by 255 for 8-bit images)")
    if multiple_of > 1 and (images.shape[2] % multiple_of or images.shape[3] % multiple_of):
        raise ValueError(f"{name} expects image sides divisible by {multiple_of}, got {tuple(images.shape[2:])}")


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C) with N = (H/p)*(W/p) patches in row-major order.

    MAE's convention: within a patch the values run row, column, then channel, so
    ``patches[b, n]`` is ``images[b, :, i*p:(i+1)*p, j*p:(j+1)*p].permute(1, 2, 0).flatten()``
    for patch n = i * (W/p) + j.
    """
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"patchify needs sides divisible by patch_size={p}, got images of shape {tuple(images.shape)}")
    h, w = H // p, W // p
    x = images.reshape(B, C, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(B, h * w, p * p * C)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int,
               grid_size: tuple[int, int] | None = None) -> torch.Tensor:
    """The inverse of :func:`patchify`: (B, N, p*p*C) -> (B, C, h*p, w*p).

    ``grid_size`` (h, w) defaults to a square grid (h = w = sqrt(N)).
    """
    B, N, D = patches.shape
    p = patch_size
    if D != p * p * channels:
        raise ValueError(f"unpatchify expected patches of width p*p*C = {p}*{p}*{channels} = {p * p * channels}, got {D}")
    if grid_size is None:
        h = w = math.isqrt(N)
        if h * w != N:
            raise ValueError(f"{N} patches do not form a square grid; pass grid_size=(h, w)")
    else:
        h, w = grid_size
        if h * w != N:
            raise ValueError(f"grid_size {grid_size} holds {h * w} patches, got {N}")
    x = patches.reshape(B, h, w, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(B, channels, h * p, w * p)


def sincos_pos_embed_2d(grid_h: int, grid_w: int, dim: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions (MAE), shape (1, [1 +] grid_h * grid_w, dim).

    Each patch (i, j) gets ``[sin(i w_k) | cos(i w_k) | sin(j w_k) | cos(j w_k)]`` with
    frequencies w_k = 10000^(-k / (dim/4)), k < dim/4; the [CLS] position is zeros.
    Same layout as ``transformers``' ``build_2d_sinusoidal_position_embedding``.
    """
    if dim % 4:
        raise ValueError(f"sin-cos 2-D positions need dim divisible by 4, got dim={dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64),
                                torch.arange(grid_w, dtype=torch.float64), indexing="ij")
    angle_h = rows.flatten()[:, None] * omega[None]
    angle_w = cols.flatten()[:, None] * omega[None]
    pos = torch.cat([angle_h.sin(), angle_h.cos(), angle_w.sin(), angle_w.cos()], dim=1)
    if cls_token:
        pos = torch.cat([torch.zeros(1, dim, dtype=pos.dtype), pos], dim=0)
    return pos.float().unsqueeze(0)


class ConvStem(nn.Sequential):
    """A small convolutional stem in place of the single patch projection.

    log2(p) stride-2 3x3 convolutions (BatchNorm, GELU), widths growing to ``dim``, then a
    1x1 projection: "Early convolutions help transformers see better" (Xiao et al. 2021).
    One strided p x p matrix has to learn edges and blobs from a few thousand images; a
    stack of 3x3 filters starts from the local structure a CNN gets for free.

    With ``patchwise=True`` each p x p patch is convolved on its own (zero padding at the
    patch's border), so a token sees only its own pixels: MAE's masking then hides a
    patch completely, as it does with the linear projection.
    """

    def __init__(self, patch_size: int, in_chans: int, dim: int, patchwise: bool = False):
        n_layers = int(math.log2(patch_size))
        if 2 ** n_layers != patch_size or n_layers < 1:
            raise ValueError(f"a conv stem needs a power-of-two patch_size >= 2, got {patch_size}")
        widths = [max(16, dim // 2 ** (n_layers - 1 - i)) for i in range(n_layers)]
        layers, channels = [], in_chans
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.GELU()]
            channels = width
        layers.append(nn.Conv2d(channels, dim, 1))
        super().__init__(*layers)
        self.patch_size, self.patchwise = patch_size, patchwise

    def forward(self, images):
        if not self.patchwise:
            return super().forward(images)
        B, C, H, W = images.shape
        p, h, w = self.patch_size, H // self.patch_size, W // self.patch_size
        patches = images.reshape(B, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(B * h * w, C, p, p)
        tokens = super().forward(patches)  # (B*h*w, dim, 1, 1)
        return tokens.reshape(B, h, w, -1).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Images (B, C, H, W) -> patch tokens (B, N, dim).

    ``stem="linear"``: one Conv2d with stride = kernel = p (the original ViT, timm's layout);
    ``stem="conv"``: a :class:`ConvStem` (same grid, same token count);
    ``stem="conv_patchwise"``: the conv stem applied inside each patch.
    """

    def __init__(self, image_size, patch_size: int, in_chans: int, dim: int, stem: str = "linear"):
        super().__init__()
        if stem not in ("linear", "conv", "conv_patchwise"):
            raise ValueError(f"stem must be 'linear', 'conv' or 'conv_patchwise', got {stem!r}")
        self.image_size = pair(image_size)
        self.patch_size = patch_size
        if self.image_size[0] % patch_size or self.image_size[1] % patch_size:
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size={patch_size}")
        self.grid_size = (self.image_size[0] // patch_size, self.image_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.stem = stem
        if stem == "linear":
            self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        else:
            self.proj = ConvStem(patch_size, in_chans, dim, patchwise=stem == "conv_patchwise")

    @torch.no_grad()
    def reset_parameters(self):
        """The projection to tokens like a Linear on the flattened patch (xavier-uniform, MAE's init);
        a conv stem's 3x3 layers keep PyTorch's default."""
        proj = self.proj if self.stem == "linear" else self.proj[-1]
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)

    @property
    def crosses_patches(self) -> bool:
        """True when a token sees pixels of the neighbouring patches (the full-image conv stem)."""
        return self.stem == "conv"

    def forward(self, images):
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, dim, h, w) -> (B, h*w, dim)


class ViT(nn.Module):
    """Vision Transformer image encoder.

    Args:
        image_size: side in pixels (int) or (H, W).
        patch_size: patch side p; the local grid is (H/p, W/p).
        in_chans: image channels (1 for X-ray and MRI).
        dim, depth, heads, mlp_ratio: width, number of blocks, attention heads, MLP width factor.
        pos_embed: ``"learned"`` (trained, trunc-normal init) or ``"sincos"`` (fixed 2-D
            sine-cosine, MAE's choice; stored as a frozen Parameter).
        pool: global feature = the [CLS] output (``"cls"``) or the mean of the patch outputs (``"mean"``).
        drop_path: stochastic-depth rate of the last block (linearly 0 -> rate over depth).
        stem: how pixels become tokens: ``"linear"`` (one p x p projection, timm's ViT),
            ``"conv"`` (a small convolutional stem, :class:`ConvStem`) or ``"conv_patchwise"``
            (the same stem inside each patch, so no token sees its neighbours' pixels).

    ``forward(images)`` -> :class:`ImageFeatures` (global (B, dim), local (B, N, dim) =
    the final-normed patch tokens). Attributes: ``dim``, ``local_dim``, ``grid_size``,
    ``num_patches``, ``patch_size``, ``in_chans``, ``image_size``.

    MAE (or any method that drops tokens) uses the pieces directly::

        x = vit.embed_patches(images)        # patch_embed(images) + pos_embed[:, 1:]    (B, N, dim)
        x, mask, ids_restore = random_masking(x, 0.75)   # keep 25% of the patch tokens
        x = vit.prepend_cls(x)               # cat(cls_token + pos_embed[:, :1], x)       (B, 1+N_kept, dim)
        latent = vit.forward_tokens(x)       # blocks, then the final norm                (B, 1+N_kept, dim)

    ``vit.forward(images)`` is exactly these three steps without the masking.
    """

    def __init__(self, image_size, patch_size: int, in_chans: int = 1, dim: int = 128, depth: int = 4,
                 heads: int = 4, mlp_ratio: float = 4.0, pos_embed: str = "learned", pool: str = "cls",
                 drop_path: float = 0.0, stem: str = "linear"):
        super().__init__()
        for name, value in (("patch_size", patch_size), ("dim", dim), ("depth", depth), ("heads", heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ViT needs {name} to be a positive integer, got {value!r}")
        if pos_embed not in ("learned", "sincos"):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {pos_embed!r}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.image_size = pair(image_size)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.dim = self.local_dim = dim
        self.pool = pool
        self.pos_embed_kind = pos_embed

        self.stem = stem
        self.patch_embed = PatchEmbed(self.image_size, patch_size, in_chans, dim, stem=stem)
        self.grid_size = self.patch_embed.grid_size
        self.num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # one position per token, the [CLS] position first (timm / MAE layout)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, dim), requires_grad=pos_embed == "learned")
        rates = torch.linspace(0, drop_path, depth).tolist() if depth > 1 else [drop_path] * depth
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio, drop_path=r) for r in rates])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """timm / MAE initialisation (see ``init_transformer_weights``); the patch
        projection is initialised like a Linear on the flattened patch (xavier-uniform)."""
        self.apply(init_transformer_weights)
        self.patch_embed.reset_parameters()
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.pos_embed_kind == "sincos":
            self.pos_embed.copy_(sincos_pos_embed_2d(*self.grid_size, self.dim, cls_token=True))
        else:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def check_input(self, images) -> None:
        check_images(images, "ViT", self.in_chans, self.image_size)

    def embed_patches(self, images):
        """(B, C, H, W) -> patch tokens with their positions added, (B, N, dim); no [CLS] yet."""
        return self.patch_embed(images) + self.pos_embed[:, 1:]

    def prepend_cls(self, tokens):
        """Prepend the [CLS] token (with its position) to (B, n, dim) tokens -> (B, 1+n, dim)."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def forward_tokens(self, tokens, attn_mask=None):
        """Run the blocks and the final LayerNorm over tokens that already carry positions."""
        for block in self.blocks:
            tokens = block(tokens, attn_mask=attn_mask)
        return self.norm(tokens)

    def pool_tokens(self, tokens) -> ImageFeatures:
        """Final tokens (B, 1+N, dim) -> ImageFeatures (global by ``pool``, local = patch tokens)."""
        patches = tokens[:, 1:]
        global_features = tokens[:, 0] if self.pool == "cls" else patches.mean(dim=1)
        return ImageFeatures(global_features, patches)

    def forward(self, images) -> ImageFeatures:
        self.check_input(images)
        tokens = self.forward_tokens(self.prepend_cls(self.embed_patches(images)))
        return self.pool_tokens(tokens)

    def extra_repr(self):
        return (f"image_size={self.image_size}, patch_size={self.patch_size}, grid_size={self.grid_size}, "
                f"pos_embed={self.pos_embed_kind!r}, pool={self.pool!r}, stem={self.stem!r}")
