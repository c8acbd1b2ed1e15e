"""SegNet encoder: VGG-16 conv blocks whose max-pools keep their indices."""

from collections.abc import Sequence

import torch
from torch import nn

from segpipe.models.base import conv_block


class SegNetEncoder(nn.Module):
    """Per block ``num_convs`` × (3×3 conv [+ BN] + ReLU) to the block's width, then a 2×2
    max-pool that returns its indices. Returns the last pooled features (stride
    ``2**len(widths)``) and every pool's indices, first block first."""

    def __init__(self, in_channels: int, widths: Sequence[int], num_convs: Sequence[int], batch_norm: bool):
        super().__init__()
        block_inputs = [in_channels, *widths[:-1]]
        self.blocks = nn.ModuleList(
            conv_block(block_in, block_out, convs, batch_norm)
            for block_in, block_out, convs in zip(block_inputs, widths, num_convs, strict=True)
        )
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        indices = []
        for block in self.blocks:
            x, block_indices = self.pool(block(x))
            indices.append(block_indices)
        return x, indices
