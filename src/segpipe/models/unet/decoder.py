"""U-Net expanding path."""

from typing import Literal

import torch
from torch import nn

from segpipe.models.base import conv_block

UpsampleMode = Literal["transpose", "bilinear", "nearest"]


def upsample_halving_channels(mode: UpsampleMode, in_channels: int) -> nn.Module:
    """2× upsampling to ``in_channels // 2`` channels: a 2×2 stride-2 transposed conv, or
    interpolation followed by a 1×1 conv."""
    out_channels = in_channels // 2
    if mode == "transpose":
        return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
    align_corners = False if mode == "bilinear" else None
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode=mode, align_corners=align_corners),
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
    )


class UpBlock(nn.Module):
    """Upsample, concatenate the same-level encoder features, two 3×3 convs."""

    def __init__(self, in_channels: int, upsample: UpsampleMode, batch_norm: bool):
        super().__init__()
        out_channels = in_channels // 2
        self.upsample = upsample_halving_channels(upsample, in_channels)
        self.convs = conv_block(2 * out_channels, out_channels, batch_norm=batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([self.upsample(x), skip], dim=1))


class UNetDecoder(nn.Module):
    """Walks the encoder features from the bottleneck back to full resolution."""

    def __init__(self, encoder_channels: list[int], upsample: UpsampleMode, batch_norm: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            UpBlock(channels, upsample, batch_norm) for channels in reversed(encoder_channels[1:])
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        *skips, x = features
        for block, skip in zip(self.blocks, reversed(skips)):
            x = block(x, skip)
        return x
