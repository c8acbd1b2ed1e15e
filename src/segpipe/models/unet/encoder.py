"""U-Net contracting path."""

import torch
from torch import nn

from segpipe.models.base import conv_block


class UNetEncoder(nn.Module):
    """Two 3×3 convs per level; each of the ``depth`` levels below the first max-pools by 2
    and doubles the channels. Returns every level's features, full resolution first and the
    bottleneck last; ``out_channels`` lists their widths."""

    def __init__(self, in_channels: int, base_channels: int, depth: int, batch_norm: bool):
        super().__init__()
        self.out_channels = [base_channels * 2**level for level in range(depth + 1)]
        self.stem = conv_block(in_channels, base_channels, batch_norm=batch_norm)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), conv_block(channels, 2 * channels, 2, batch_norm))
            for channels in self.out_channels[:-1]
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features
