"""Xception-style decoder: residual transposed-conv blocks, each upsampling 2×."""

from collections.abc import Sequence

from torch import nn

from segpipe.models.xception_unet.encoder import ResidualBlock


def up_block(in_channels: int, out_channels: int) -> ResidualBlock:
    """ReLU, 2 × (3×3 stride-1 transposed conv + BN) with a ReLU between, 2× nearest upsampling;
    shortcut: 1×1 conv + 2× nearest upsampling. Doubles the resolution."""
    main = nn.Sequential(
        nn.ReLU(),  # not in-place: the shortcut reads the same input
        nn.ConvTranspose2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.Upsample(scale_factor=2),
    )
    # Keras upsamples before the 1×1 conv; with nearest upsampling the order does not change
    # the result, and convolving first costs a quarter of the work.
    shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.Upsample(scale_factor=2))
    return ResidualBlock(main, shortcut)


class XceptionDecoder(nn.Sequential):
    """One ``up_block`` per ``channels`` entry, from ``in_channels``-wide bottleneck features."""

    def __init__(self, in_channels: int, channels: Sequence[int]):
        widths = [in_channels, *channels]
        super().__init__(*map(up_block, widths[:-1], widths[1:]))
