"""A small ResNet-style CNN image encoder (the convolutional baseline of lesson 01).

stem (3x3 conv, BatchNorm, ReLU, stride ``stem_stride``) -> one stage per width,
each a stack of residual BasicBlocks (He et al. 2016), every stage after the first
halving the resolution -> global average pool (-> optional Linear to ``dim``).

The last stage's feature map is the local feature grid: (B, C, h, w) flattened to
(B, h*w, C) regions, row-major, as GLoRIA does with its CNN's intermediate map.
"""
from __future__ import annotations

import torch.nn as nn

from .vit import ImageFeatures, check_images, pair


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (a strided 1x1 conv-BN when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CNNEncoder(nn.Module):
    """ResNet-style encoder returning :class:`ImageFeatures`.

    Args:
        in_chans: image channels.
        widths: channels of each stage; stage i > 0 halves the resolution.
        dim: if given, a Linear maps the pooled ``widths[-1]`` vector to ``dim``;
            else the global feature is the pooled vector itself (``dim = widths[-1]``).
        blocks_per_stage: BasicBlocks per stage (ResNet-18 uses 2).
        stem_stride: stride of the stem conv (2 halves the input once more, cheaply).
        image_size: if given (int or (H, W)), inputs must have this size and
            ``grid_size`` is fixed; if None, any size divisible by ``reduction`` works
            and ``grid_size`` is None (use ``grid_size_for(image_size)``).

    Attributes: ``dim`` (global width), ``local_dim`` (= ``widths[-1]``), ``reduction``
    (input pixels per local region side), ``grid_size`` (h, w) of the local grid.
    With the defaults a 64 px image gives a 4 x 4 grid, a 128 px image 8 x 8.
    """

    def __init__(self, in_chans: int = 1, widths=(32, 64, 128, 256), dim: int | None = None,
                 blocks_per_stage: int = 1, stem_stride: int = 2, image_size=None):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty sequence of positive channel counts, got {widths}")
        if blocks_per_stage < 1 or stem_stride < 1:
            raise ValueError(f"blocks_per_stage and stem_stride must be >= 1, got {blocks_per_stage}, {stem_stride}")
        self.in_chans = in_chans
        self.widths = widths
        self.local_dim = widths[-1]
        self.dim = dim or widths[-1]
        self.reduction = stem_stride * 2 ** (len(widths) - 1)
        self.image_size = pair(image_size) if image_size is not None else None
        if self.image_size and (self.image_size[0] % self.reduction or self.image_size[1] % self.reduction):
            raise ValueError(f"image_size {self.image_size} must be divisible by the CNN's total stride "
                             f"{self.reduction} (stem_stride * 2**(len(widths)-1))")
        self.grid_size = self.grid_size_for(self.image_size) if self.image_size else None

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages, channels = [], widths[0]
        for i, width in enumerate(widths):
            blocks = [BasicBlock(channels, width, stride=1 if i == 0 else 2)]
            blocks += [BasicBlock(width, width) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Linear(widths[-1], dim) if dim else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self):
        """torchvision's ResNet init with ``zero_init_residual=True``: Kaiming-normal convs
        (fan_out, ReLU), BN weight 1 / bias 0, and each residual branch's last BN weight 0,
        so every block starts as (ReLU of) its shortcut, which trains deep stacks stably
        (Goyal et al. 2017)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def grid_size_for(self, image_size) -> tuple[int, int]:
        """The (h, w) local grid of an input of ``image_size`` pixels."""
        h, w = pair(image_size)
        return (h // self.reduction, w // self.reduction)

    def forward(self, images) -> ImageFeatures:
        check_images(images, "CNNEncoder", self.in_chans, self.image_size, multiple_of=self.reduction)
        fmap = self.stages(self.stem(images))                  # (B, C, h, w)
        local_features = fmap.flatten(2).transpose(1, 2)       # (B, h*w, C)
        global_features = self.proj(local_features.mean(dim=1))
        return ImageFeatures(global_features, local_features)
