"""Xception-style U-Net model."""

from torch import nn

from segpipe.models.base import SegmentationModel
from segpipe.models.xception_unet.config import XceptionUNetConfig
from segpipe.models.xception_unet.decoder import XceptionDecoder
from segpipe.models.xception_unet.encoder import XceptionEncoder


class XceptionUNet(SegmentationModel):
    """The U-Net-like network of the Keras example "Image segmentation with a U-Net-like
    architecture" (Oxford Pets), returning logits instead of softmax probabilities.

    Encoder: 3×3 stride-2 entry conv, then per ``encoder_channels`` entry a residual block of
    two depthwise-separable 3×3 convs and a 3×3 stride-2 max-pool (shortcut: 1×1 stride-2 conv).
    Decoder: per ``decoder_channels`` entry a residual block of two 3×3 transposed convs and a
    2× nearest upsampling (shortcut: 1×1 conv, upsampled). Head: 3×3 conv. As in the original,
    encoder and decoder are joined only at the bottleneck (no U-Net skip concatenations).

    Args:
        num_classes: Output channels (logits per class).
        in_channels: Input image channels.
        config: The options (:class:`XceptionUNetConfig`); its defaults when None.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, config: XceptionUNetConfig | None = None):
        config = XceptionUNetConfig() if config is None else config
        encoder_channels, decoder_channels = config.encoder_channels, config.decoder_channels
        encoder = XceptionEncoder(in_channels, config.entry_channels, encoder_channels)
        decoder = XceptionDecoder(encoder_channels[-1], decoder_channels)
        head = nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1)
        super().__init__(
            encoder, decoder, head, output_stride=2 ** (1 + len(encoder_channels)), in_channels=in_channels
        )
