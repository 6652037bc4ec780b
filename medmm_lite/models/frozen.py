"""A pretrained encoder used as it is, the way LLaVA uses its CLIP ViT and many report generators
their ImageNet ResNet.

Frozen means more than ``requires_grad_(False)``: a training loop calls ``model.train()``, which
would put a BatchNorm (the ViT's convolutional stem has three) back into training mode, and its
running statistics would drift to the new task's batches while its weights stay put. Here the
wrapped module stays in eval mode whatever mode its parent is put in, and runs without autograd.
"""
from __future__ import annotations

import torch
from torch import nn


class FrozenEncoder(nn.Module):
    """``module`` with no trainable parameters, always in eval mode, run under ``torch.no_grad``.

    Attributes an encoder is read by (``local_dim``, ``grid_size``, ``global_dim``...) are the
    wrapped module's; its weights are saved and loaded as ``module.*``.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module (a pretrained encoder), got {type(module).__name__}")
        self.module = module.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.module(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)
