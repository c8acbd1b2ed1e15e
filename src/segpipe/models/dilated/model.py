"""Dilated (atrous) context network model."""

from torch import nn

from segpipe.models.base import SegmentationModel
from segpipe.models.dilated.config import DilatedNetConfig
from segpipe.models.dilated.decoder import DilatedDecoder
from segpipe.models.dilated.encoder import DilatedFrontEnd


class DilatedNet(SegmentationModel):
    """Dilated-convolution context network after Yu & Koltun (2016), small and trained from
    scratch: a front end that pools only ``front_downsamples`` times, a context module of 3×3
    convs with growing dilation rates at that resolution, a light ×stride upsampling and a 1×1
    head.

    Args:
        num_classes: Output channels (logits per class).
        in_channels: Input image channels.
        config: The options (:class:`DilatedNetConfig`); its defaults when None.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, config: DilatedNetConfig | None = None):
        config = DilatedNetConfig() if config is None else config
        stride = 2**config.front_downsamples
        encoder = DilatedFrontEnd(
            in_channels, config.base_channels, config.front_downsamples, config.batch_norm
        )
        decoder = DilatedDecoder(
            encoder.out_channels,
            config.context_channels,
            config.dilations,
            config.base_channels,
            stride,
            config.upsample,
            config.batch_norm,
        )
        head = nn.Conv2d(config.base_channels, num_classes, kernel_size=1)
        super().__init__(encoder, decoder, head, output_stride=stride, in_channels=in_channels)
