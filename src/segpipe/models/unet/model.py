"""U-Net model."""

from torch import nn

from segpipe.models.base import SegmentationModel
from segpipe.models.unet.config import UNetConfig
from segpipe.models.unet.decoder import UNetDecoder
from segpipe.models.unet.encoder import UNetEncoder


class UNet(SegmentationModel):
    """U-Net (Ronneberger et al., 2015) with same-padded convolutions.

    Args:
        num_classes: Output channels (logits per class).
        in_channels: Input image channels.
        config: The options (:class:`UNetConfig`); its defaults when None.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, config: UNetConfig | None = None):
        config = UNetConfig() if config is None else config
        encoder = UNetEncoder(in_channels, config.base_channels, config.depth, config.batch_norm)
        decoder = UNetDecoder(encoder.out_channels, config.upsample, config.batch_norm)
        head = nn.Conv2d(config.base_channels, num_classes, kernel_size=1)
        super().__init__(encoder, decoder, head, output_stride=2**config.depth, in_channels=in_channels)
