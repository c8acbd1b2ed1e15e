"""FCN-32s / 16s / 8s model."""

from typing import Literal

from segpipe.models.base import SegmentationModel
from segpipe.models.fcn.config import FCNConfig
from segpipe.models.fcn.decoder import BilinearUpsample, FCNDecoder
from segpipe.models.fcn.encoder import VGG16Encoder


class FCN(SegmentationModel):
    """FCN (Long et al., 2015) on a VGG-16 encoder, without padding/cropping tricks.

    Args:
        num_classes: Output channels (logits per class).
        in_channels: Input image channels.
        config: The options (:class:`FCNConfig`); its defaults when None.
        variant: 32, 16 or 8 — the stride of the last fused score map (32s: none, 16s: pool4,
            8s: pool4 and pool3), upsampled to the input size by a bilinear-initialised
            transposed conv. ``output_stride`` is always 32.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        config: FCNConfig | None = None,
        variant: Literal[32, 16, 8] = 32,
    ):
        if variant not in (32, 16, 8):
            raise ValueError(f"FCN variant must be 32, 16 or 8, got {variant}")
        config = FCNConfig() if config is None else config
        encoder = VGG16Encoder(
            in_channels, config.width, config.fc_channels, config.dropout, config.batch_norm
        )
        decoder = FCNDecoder(encoder.out_channels, num_classes, variant)
        head = BilinearUpsample(num_classes, factor=variant)
        super().__init__(encoder, decoder, head, output_stride=32, in_channels=in_channels)
