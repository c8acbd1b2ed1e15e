"""SegNet model."""

from torch import nn

from segpipe.models.base import SegmentationModel
from segpipe.models.fcn.encoder import VGG16_BLOCKS, scaled
from segpipe.models.segnet.decoder import SegNetDecoder
from segpipe.models.segnet.encoder import SegNetEncoder
from segpipe.models.upsampling import UpsampleMode


class SegNet(SegmentationModel):
    """SegNet (Badrinarayanan et al., 2017): a VGG-16(-BN) encoder whose 2×2 max-pools keep
    their argmax indices, and a mirrored decoder that max-unpools with them (each value goes
    back where it was pooled from, zeros elsewhere) and densifies with 3×3 convs; 1×1 head.

    Args:
        num_classes: Output channels (logits per class).
        in_channels: Input image channels.
        blocks: How many of VGG-16's five conv blocks (2, 2, 3, 3, 3 convs) to use, each
            followed by a pool; ``output_stride`` is ``2**blocks``.
        width: Multiplier on VGG-16's widths (64, 128, 256, 512, 512), at least 8 each.
        upsample: A :func:`~segpipe.models.upsampling.make_upsample` mode; "max_unpool" is
            SegNet's, the others ignore the pooling indices. Channels are kept while upsampling.
        batch_norm: BatchNorm after every 3×3 conv.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        blocks: int = 5,
        width: float = 0.25,
        upsample: UpsampleMode = "max_unpool",
        batch_norm: bool = True,
    ):
        if not 1 <= blocks <= len(VGG16_BLOCKS):
            raise ValueError(f"SegNet blocks must be 1 to {len(VGG16_BLOCKS)}, got {blocks}")
        widths = [scaled(channels, width) for channels, _ in VGG16_BLOCKS[:blocks]]
        num_convs = [convs for _, convs in VGG16_BLOCKS[:blocks]]
        encoder = SegNetEncoder(in_channels, widths, num_convs, batch_norm)
        decoder = SegNetDecoder(widths, num_convs, upsample, batch_norm)
        head = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        super().__init__(encoder, decoder, head, output_stride=2**blocks)
