"""SegNet model."""

from torch import nn

from segpipe.models.base import SegmentationModel
from segpipe.models.fcn.encoder import VGG16_BLOCKS, scaled
from segpipe.models.segnet.config import SegNetConfig
from segpipe.models.segnet.decoder import SegNetDecoder
from segpipe.models.segnet.encoder import SegNetEncoder


class SegNet(SegmentationModel):
    """SegNet (Badrinarayanan et al., 2017): a VGG-16(-BN) encoder whose 2×2 max-pools keep
    their argmax indices, and a mirrored decoder that max-unpools with them (each value goes
    back where it was pooled from, zeros elsewhere) and densifies with 3×3 convs; 1×1 head.

    Args:
        num_classes: Output channels (logits per class).
        in_channels: Input image channels.
        config: The options (:class:`SegNetConfig`); its defaults when None.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, config: SegNetConfig | None = None):
        config = SegNetConfig() if config is None else config
        blocks = VGG16_BLOCKS[: config.blocks]
        widths = [scaled(channels, config.width) for channels, _ in blocks]
        num_convs = [convs for _, convs in blocks]
        encoder = SegNetEncoder(in_channels, widths, num_convs, config.batch_norm)
        decoder = SegNetDecoder(widths, num_convs, config.upsample, config.batch_norm)
        head = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        super().__init__(encoder, decoder, head, output_stride=2**config.blocks, in_channels=in_channels)
