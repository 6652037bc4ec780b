"""The course's standard backbones, sized by a profile.

Every lesson builds its encoders here, so their numbers compare: the capstone's
"one backbone, one budget" starts with one function per tower.
"""
from __future__ import annotations

from .models import CNNEncoder, TextDecoder, TextEncoder, ViT
from .profiles import Profile


def image_encoder(P: Profile, kind: str = "vit", **overrides):
    """A ViT (the default: MAE, local alignment and the VLM need its patch grid) or a small ResNet.

    The ViT's stem is the profile's ``vit_stem``: a small convolutional stem by default, which at
    the cpu budget lifts lesson 01's supervised ViT from the level of a linear patch projection to
    that of the small CNN; its global feature is the mean of the patch outputs (``vit_pool``), which
    learned faster and steadier than the [CLS] output at that budget (benchmarks/backbone_study.py;
    docs/performance.md has the table).
    """
    if kind == "vit":
        args = dict(image_size=P.image_size, patch_size=P.patch_size, in_chans=1, dim=P.dim, depth=P.depth,
                    heads=P.heads, stem=P.vit_stem, pool=P.vit_pool)
        return ViT(**{**args, **overrides})
    if kind == "cnn":
        widths = tuple(w * P.dim // 128 for w in (32, 64, 128, 256)) if P.dim >= 64 else (16, 32, 64, 128)
        return CNNEncoder(in_chans=1, widths=overrides.pop("widths", widths), dim=overrides.pop("dim", P.dim),
                          image_size=P.image_size, **overrides)
    raise ValueError(f"kind must be 'vit' or 'cnn', got {kind!r}")


def text_encoder(P: Profile, vocab_size: int, **overrides) -> TextEncoder:
    args = dict(vocab_size=vocab_size, dim=P.dim, depth=P.depth, heads=P.heads, max_len=P.max_text_len)
    return TextEncoder(**{**args, **overrides})


def text_decoder(P: Profile, vocab_size: int, cross_attention: bool = False, **overrides) -> TextDecoder:
    args = dict(vocab_size=vocab_size, dim=P.dim, depth=P.depth, heads=P.heads, max_len=P.max_text_len,
                cross_attention=cross_attention)
    return TextDecoder(**{**args, **overrides})
