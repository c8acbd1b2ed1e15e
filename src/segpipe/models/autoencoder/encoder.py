"""Autoencoder encoder: conv levels with max-pooling, then the bottleneck."""

from collections.abc import Sequence

import torch
from torch import nn

from segpipe.models.base import conv_block


class AutoencoderEncoder(nn.Module):
    """Per level two 3×3 convs [+ BN] + ReLU to the level's width, then a 2×2 max-pool; then
    two 3×3 convs to ``bottleneck_channels``. Returns only the code, at stride
    ``2**len(widths)``."""

    def __init__(self, in_channels: int, widths: Sequence[int], bottleneck_channels: int, batch_norm: bool):
        super().__init__()
        level_inputs = [in_channels, *widths[:-1]]
        self.levels = nn.Sequential(
            *(
                nn.Sequential(conv_block(level_in, level_out, 2, batch_norm), nn.MaxPool2d(2))
                for level_in, level_out in zip(level_inputs, widths, strict=True)
            )
        )
        self.bottleneck = conv_block(widths[-1], bottleneck_channels, 2, batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.levels(x))
