"""U-Net contracting path."""

import torch
from torch import nn

from segpipe.models.base import conv_block


class PoolThenConvs(nn.Sequential):
    """2×2 max-pool then ``convs``; returns the features and the pooling indices."""

    def __init__(self, convs: nn.Module):
        super().__init__(nn.MaxPool2d(2, return_indices=True), convs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool, convs = self
        pooled, indices = pool(x)
        return convs(pooled), indices


class UNetEncoder(nn.Module):
    """Two 3×3 convs per level; each of the ``depth`` levels below the first max-pools by 2
    and doubles the channels. Returns every level's features, full resolution first and the
    bottleneck last (``out_channels`` lists their widths), and the ``depth`` pooling indices,
    for ``max_unpool`` upsampling."""

    def __init__(self, in_channels: int, base_channels: int, depth: int, batch_norm: bool):
        super().__init__()
        self.out_channels = [base_channels * 2**level for level in range(depth + 1)]
        self.stem = conv_block(in_channels, base_channels, batch_norm=batch_norm)
        self.downs = nn.ModuleList(
            PoolThenConvs(conv_block(channels, 2 * channels, 2, batch_norm))
            for channels in self.out_channels[:-1]
        )

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features, indices = [self.stem(x)], []
        for down in self.downs:
            level_features, level_indices = down(features[-1])
            features.append(level_features)
            indices.append(level_indices)
        return features, indices
