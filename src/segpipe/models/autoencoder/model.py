"""Convolutional autoencoder model."""

from typing import Literal

from torch import nn

from segpipe.models.autoencoder.decoder import AutoencoderDecoder
from segpipe.models.autoencoder.encoder import AutoencoderEncoder
from segpipe.models.base import SegmentationModel

AutoencoderUpsample = Literal["nearest", "bilinear", "transpose", "bed_of_nails"]


class Autoencoder(SegmentationModel):
    """Convolutional encoder-decoder without skip connections: everything the output knows
    passes through the bottleneck code [N, bottleneck_channels, H / 2**depth, W / 2**depth].

    ``out_channels`` is the number of output maps, not necessarily classes: ``num_classes``
    for segmentation logits, ``in_channels`` for image reconstruction (e.g. denoising), where
    the output [N, in_channels, H, W] is compared with the image itself.

    Args:
        out_channels: Channels of the 1×1 head's output.
        in_channels: Input image channels.
        depth: Number of conv + 2× max-pool levels; ``output_stride`` is ``2**depth``.
        base_channels: Width of the first level; each level below doubles it.
        bottleneck_channels: Width of the code; defaults to ``base_channels * 2**depth``, a
            smaller value narrows the bottleneck.
        upsample: A :func:`~segpipe.models.upsampling.make_upsample` mode other than
            "max_unpool" (pooling indices would carry information around the bottleneck).
        batch_norm: BatchNorm after every 3×3 conv.
    """

    def __init__(
        self,
        out_channels: int,
        in_channels: int = 3,
        depth: int = 3,
        base_channels: int = 16,
        bottleneck_channels: int | None = None,
        upsample: AutoencoderUpsample = "transpose",
        batch_norm: bool = True,
    ):
        if upsample == "max_unpool":
            raise ValueError(
                "Autoencoder cannot use upsample='max_unpool': without skips, no pooling "
                "indices reach the decoder"
            )
        widths = [base_channels * 2**level for level in range(depth)]
        if bottleneck_channels is None:
            bottleneck_channels = base_channels * 2**depth
        encoder = AutoencoderEncoder(in_channels, widths, bottleneck_channels, batch_norm)
        decoder = AutoencoderDecoder(bottleneck_channels, widths, upsample, batch_norm)
        head = nn.Conv2d(base_channels, out_channels, kernel_size=1)
        super().__init__(encoder, decoder, head, output_stride=2**depth)
