"""Autoencoder decoder: the encoder mirrored, without skip connections."""

from collections.abc import Sequence

from torch import nn

from segpipe.models.base import conv_block
from segpipe.models.upsampling import UpsampleMode, make_upsample


class AutoencoderDecoder(nn.Sequential):
    """Per level, deepest first: 2× upsampling to the level's width, then two 3×3 convs
    [+ BN] + ReLU. Decodes the code alone; returns ``widths[0]`` channels at full resolution."""

    def __init__(
        self,
        bottleneck_channels: int,
        widths: Sequence[int],
        upsample: UpsampleMode,
        batch_norm: bool,
    ):
        level_inputs = [bottleneck_channels, *reversed(widths[1:])]
        super().__init__(
            *(
                nn.Sequential(
                    make_upsample(upsample, level_in, level_out),
                    conv_block(level_out, level_out, 2, batch_norm),
                )
                for level_in, level_out in zip(level_inputs, reversed(widths), strict=True)
            )
        )
