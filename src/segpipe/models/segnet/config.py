"""Options of ``segnet``."""

from pydantic import Field

from segpipe.models.options import ModelConfig, UpsampleMode


class SegNetConfig(ModelConfig):
    """Options of ``segnet`` (:class:`~segpipe.models.segnet.model.SegNet`); the defaults are
    VGG-16-BN at a quarter width."""

    blocks: int = Field(5, ge=1, le=5)
    """How many of VGG-16's five conv blocks (2, 2, 3, 3, 3 convs) to use, each followed by a
    pool; ``output_stride`` is ``2**blocks``."""
    width: float = Field(0.25, gt=0, le=1)
    """Multiplier on VGG-16's widths (64, 128, 256, 512, 512), at least 8 each."""
    upsample: UpsampleMode = "max_unpool"
    """A :func:`~segpipe.models.upsampling.make_upsample` mode; "max_unpool" is SegNet's, the
    others ignore the pooling indices. Channels are kept while upsampling."""
    batch_norm: bool = True
    """BatchNorm after every 3×3 conv."""
