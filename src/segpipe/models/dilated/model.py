"""Dilated (atrous) context network model."""

from collections.abc import Sequence

from torch import nn

from segpipe.models.base import SegmentationModel
from segpipe.models.dilated.decoder import DilatedDecoder, UpsampleMode
from segpipe.models.dilated.encoder import DilatedFrontEnd


class DilatedNet(SegmentationModel):
    """Dilated-convolution context network after Yu & Koltun (2016), small and trained from
    scratch: a front end that pools only ``front_downsamples`` times, a context module of 3×3
    convs with growing dilation rates at that resolution, a light ×stride upsampling and a 1×1
    head.

    Args:
        num_classes: Output channels (logits per class).
        in_channels: Input image channels.
        base_channels: Width of the first front-end block (doubling per block) and of the
            upsampled features the head scores.
        front_downsamples: Front-end 2×2 max-pools; ``output_stride`` is ``2**front_downsamples``.
        dilations: Dilation rate of each context conv (padding = rate, resolution kept).
        context_channels: Width of the context convs.
        upsample: "bilinear" (interpolation + 3×3 conv) or "transpose" (transposed conv with
            kernel 2·stride, stride ``output_stride``).
        batch_norm: BatchNorm after every conv except the head.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        base_channels: int = 16,
        front_downsamples: int = 2,
        dilations: Sequence[int] = (1, 2, 4, 8, 16),
        context_channels: int = 64,
        upsample: UpsampleMode = "bilinear",
        batch_norm: bool = True,
    ):
        stride = 2**front_downsamples
        encoder = DilatedFrontEnd(in_channels, base_channels, front_downsamples, batch_norm)
        decoder = DilatedDecoder(
            encoder.out_channels,
            context_channels,
            dilations,
            base_channels,
            stride,
            upsample,
            batch_norm,
        )
        head = nn.Conv2d(base_channels, num_classes, kernel_size=1)
        super().__init__(encoder, decoder, head, output_stride=stride)
