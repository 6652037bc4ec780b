"""The networks of the course, each small enough to read in one sitting.

* ``ViT`` and ``CNNEncoder``: image encoders returning ``ImageFeatures(global, local)``.
* ``TextEncoder``: a bidirectional text transformer returning ``TextFeatures``.
* ``TextDecoder``: a causal language model (optionally cross-attending to image
  features) with a KV cache; ``generate`` decodes with it (greedy, sampling, beam).
* ``Block``, ``Attention``, ``CrossAttention``, ``MLP``: the shared transformer pieces.
* ``patchify`` / ``unpatchify``: images <-> (B, N, p*p*C) patch vectors (MAE's convention).
* ``feature_dim``: an encoder's global feature width, which the heads put on it read.
"""
from __future__ import annotations

import torch.nn as nn

from .attention import MLP, Attention, Block, CrossAttention, DropPath, LayerCache
from .cnn import BasicBlock, CNNEncoder
from .features import feature_dim
from .generation import generate, top_k_filter, top_p_filter
from .text import DecoderOutput, TextDecoder, TextEncoder, TextFeatures
from .vit import ImageFeatures, PatchEmbed, ViT, patchify, sincos_pos_embed_2d, unpatchify


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones, e.g. tied embeddings, counted once).

    ``trainable_only`` counts only those with ``requires_grad`` (what an optimiser updates,
    e.g. after freezing an encoder for a linear probe).
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "ViT", "CNNEncoder", "TextEncoder", "TextDecoder",
    "ImageFeatures", "TextFeatures", "DecoderOutput", "LayerCache",
    "generate", "top_k_filter", "top_p_filter",
    "patchify", "unpatchify", "sincos_pos_embed_2d", "count_parameters", "feature_dim",
    "Block", "Attention", "CrossAttention", "MLP", "DropPath", "PatchEmbed", "BasicBlock",
]
