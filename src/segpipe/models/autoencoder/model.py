"""Convolutional autoencoder model."""

from torch import nn

from segpipe.models.autoencoder.config import AutoencoderConfig
from segpipe.models.autoencoder.decoder import AutoencoderDecoder
from segpipe.models.autoencoder.encoder import AutoencoderEncoder
from segpipe.models.base import SegmentationModel


class Autoencoder(SegmentationModel):
    """Convolutional encoder-decoder without skip connections: everything the output knows
    passes through the bottleneck code [N, bottleneck_channels, H / 2**depth, W / 2**depth].

    ``out_channels`` is the number of output maps, not necessarily classes: ``num_classes``
    for segmentation logits, ``in_channels`` for image reconstruction (e.g. denoising), where
    the output [N, in_channels, H, W] is compared with the image itself.

    Args:
        out_channels: Channels of the 1×1 head's output.
        in_channels: Input image channels.
        config: The options (:class:`AutoencoderConfig`); its defaults when None.
    """

    def __init__(self, out_channels: int, in_channels: int = 3, config: AutoencoderConfig | None = None):
        config = AutoencoderConfig() if config is None else config
        base, depth = config.base_channels, config.depth
        widths = [base * 2**level for level in range(depth)]
        bottleneck = config.bottleneck_channels or base * 2**depth
        encoder = AutoencoderEncoder(in_channels, widths, bottleneck, config.batch_norm)
        decoder = AutoencoderDecoder(bottleneck, widths, config.upsample, config.batch_norm)
        head = nn.Conv2d(base, out_channels, kernel_size=1)
        super().__init__(encoder, decoder, head, output_stride=2**depth, in_channels=in_channels)
