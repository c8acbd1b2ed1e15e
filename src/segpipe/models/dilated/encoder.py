"""Front end of the dilated network: a VGG-style encoder that stops downsampling early."""

from torch import nn

from segpipe.models.base import conv_block


class DilatedFrontEnd(nn.Sequential):
    """``downsamples`` blocks of two 3×3 convs [+ BatchNorm] + ReLU and a 2×2 max-pool, the
    widths doubling from ``base_channels``. Output stride ``2**downsamples``; ``out_channels``
    is the last block's width."""

    def __init__(self, in_channels: int, base_channels: int, downsamples: int, batch_norm: bool):
        widths = [base_channels * 2**index for index in range(downsamples)]
        super().__init__(
            *(
                nn.Sequential(conv_block(block_in, block_out, 2, batch_norm), nn.MaxPool2d(2))
                for block_in, block_out in zip([in_channels, *widths[:-1]], widths, strict=True)
            )
        )
        self.out_channels = widths[-1]
