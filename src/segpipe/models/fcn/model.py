"""FCN-32s / 16s / 8s model."""

from typing import Literal

from segpipe.models.base import SegmentationModel
from segpipe.models.fcn.decoder import BilinearUpsample, FCNDecoder
from segpipe.models.fcn.encoder import VGG16Encoder


class FCN(SegmentationModel):
    """FCN (Long et al., 2015) on a VGG-16 encoder, without padding/cropping tricks.

    Args:
        num_classes: Output channels (logits per class).
        in_channels: Input image channels.
        variant: 32, 16 or 8 — the stride of the last fused score map (32s: none, 16s: pool4,
            8s: pool4 and pool3), upsampled to the input size by a bilinear-initialised
            transposed conv. ``output_stride`` is always 32.
        width: Multiplier on VGG-16's channels (64…512 and 4096), at least 8 each.
        fc_channels: fc6/fc7 channels; defaults to ``round(4096 * width)``.
        dropout: Dropout probability after fc6 and fc7.
        batch_norm: BatchNorm after every encoder conv (VGG-16-BN); ``False`` is the original VGG-16.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        variant: Literal[32, 16, 8] = 32,
        width: float = 0.25,
        fc_channels: int | None = None,
        dropout: float = 0.5,
        batch_norm: bool = True,
    ):
        if variant not in (32, 16, 8):
            raise ValueError(f"FCN variant must be 32, 16 or 8, got {variant}")
        encoder = VGG16Encoder(in_channels, width, fc_channels, dropout, batch_norm)
        decoder = FCNDecoder(encoder.out_channels, num_classes, variant)
        head = BilinearUpsample(num_classes, factor=variant)
        super().__init__(encoder, decoder, head, output_stride=32)
