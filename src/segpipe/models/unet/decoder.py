"""U-Net expanding path."""

import torch
from torch import nn

from segpipe.models.base import conv_block
from segpipe.models.upsampling import UpsampleMode, make_upsample


class UpBlock(nn.Module):
    """Upsample 2× halving the channels, concatenate the same-level encoder features, two
    3×3 convs."""

    def __init__(self, in_channels: int, upsample: UpsampleMode, batch_norm: bool):
        super().__init__()
        out_channels = in_channels // 2
        self.upsample = make_upsample(upsample, in_channels, out_channels)
        self.convs = conv_block(2 * out_channels, out_channels, batch_norm=batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([self.upsample(x, indices), skip], dim=1))


class UNetDecoder(nn.Module):
    """Walks the encoder features from the bottleneck back to full resolution."""

    def __init__(self, encoder_channels: list[int], upsample: UpsampleMode, batch_norm: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            UpBlock(channels, upsample, batch_norm) for channels in reversed(encoder_channels[1:])
        )

    def forward(self, encoded: tuple[list[torch.Tensor], list[torch.Tensor]]) -> torch.Tensor:
        features, indices = encoded
        *skips, x = features
        for block, skip, level_indices in zip(self.blocks, reversed(skips), reversed(indices), strict=True):
            x = block(x, skip, level_indices)
        return x
