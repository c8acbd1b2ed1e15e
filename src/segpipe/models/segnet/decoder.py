"""SegNet decoder: the encoder mirrored, upsampling with its max-pooling indices."""

from collections.abc import Sequence

import torch
from torch import nn

from segpipe.models.base import conv_block
from segpipe.models.upsampling import UpsampleMode, make_upsample


class SegNetDecoderBlock(nn.Module):
    """Upsample 2× at ``in_channels`` (``max_unpool``: with the mirrored pool's indices), then
    ``num_convs`` × (3×3 conv [+ BN] + ReLU), the last narrowing to ``out_channels``: each conv
    mirrors one of the encoder block's, as in SegNet."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_convs: int,
        upsample: UpsampleMode,
        batch_norm: bool,
    ):
        super().__init__()
        self.upsample = make_upsample(upsample, in_channels, in_channels)
        self.convs = nn.Sequential(
            *conv_block(in_channels, in_channels, num_convs - 1, batch_norm),
            *conv_block(in_channels, out_channels, 1, batch_norm),
        )

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.convs(self.upsample(x, indices))


class SegNetDecoder(nn.Module):
    """One block per encoder block, deepest first; each returns to the width of the encoder
    block above it (the first block's to its own). Returns features at full resolution with
    ``widths[0]`` channels."""

    def __init__(
        self,
        widths: Sequence[int],
        num_convs: Sequence[int],
        upsample: UpsampleMode,
        batch_norm: bool,
    ):
        super().__init__()
        block_outputs = [widths[0], *widths[:-1]]
        mirrored = zip(reversed(widths), reversed(block_outputs), reversed(num_convs), strict=True)
        self.blocks = nn.ModuleList(
            SegNetDecoderBlock(block_in, block_out, convs, upsample, batch_norm)
            for block_in, block_out, convs in mirrored
        )

    def forward(self, encoded: tuple[torch.Tensor, list[torch.Tensor]]) -> torch.Tensor:
        x, indices = encoded
        for block, block_indices in zip(self.blocks, reversed(indices), strict=True):
            x = block(x, block_indices)
        return x
