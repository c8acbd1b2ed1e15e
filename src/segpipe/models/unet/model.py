"""U-Net model."""

from torch import nn

from segpipe.models.base import SegmentationModel
from segpipe.models.unet.decoder import UNetDecoder
from segpipe.models.unet.encoder import UNetEncoder
from segpipe.models.upsampling import UpsampleMode


class UNet(SegmentationModel):
    """U-Net (Ronneberger et al., 2015) with same-padded convolutions.

    Args:
        num_classes: Output channels (logits per class).
        in_channels: Input image channels.
        depth: Number of 2× poolings; ``output_stride`` is ``2**depth``.
        base_channels: Width of the first level; each level below doubles it.
        upsample: A :func:`~segpipe.models.upsampling.make_upsample` mode: "transpose"
            (2×2 stride-2 transposed conv), or a 1×1 conv followed by "nearest"/"bilinear"
            interpolation, "bed_of_nails" or "max_unpool" (with the same level's pooling
            indices); each upsampling halves the channels.
        batch_norm: BatchNorm after every 3×3 conv.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        depth: int = 4,
        base_channels: int = 16,
        upsample: UpsampleMode = "transpose",
        batch_norm: bool = True,
    ):
        encoder = UNetEncoder(in_channels, base_channels, depth, batch_norm)
        decoder = UNetDecoder(encoder.out_channels, upsample, batch_norm)
        head = nn.Conv2d(base_channels, num_classes, kernel_size=1)
        super().__init__(encoder, decoder, head, output_stride=2**depth)
