"""Xception-style U-Net model."""

from collections.abc import Sequence

from torch import nn

from segpipe.models.base import SegmentationModel
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
        entry_channels: Width of the entry conv (Keras: 32).
        encoder_channels: Width of each down block (Keras: 64, 128, 256); ``output_stride`` is
            ``2**(1 + len(encoder_channels))``.
        decoder_channels: Width of each up block (Keras: 256, 128, 64, 32); one more entry than
            ``encoder_channels`` so that the output is at the input size.

    The defaults are the Keras widths halved, to train on a CPU.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        entry_channels: int = 16,
        encoder_channels: Sequence[int] = (32, 64, 128),
        decoder_channels: Sequence[int] = (128, 64, 32, 16),
    ):
        if len(decoder_channels) != len(encoder_channels) + 1:
            raise ValueError(
                f"decoder_channels needs len(encoder_channels) + 1 = {len(encoder_channels) + 1} "
                f"entries, got {len(decoder_channels)}"
            )
        encoder = XceptionEncoder(in_channels, entry_channels, encoder_channels)
        decoder = XceptionDecoder(encoder_channels[-1], decoder_channels)
        head = nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1)
        super().__init__(encoder, decoder, head, output_stride=2 ** (1 + len(encoder_channels)))
