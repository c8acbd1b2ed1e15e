"""Options of ``autoencoder``."""

from typing import Literal

from pydantic import Field

from segpipe.models.options import ModelConfig

AutoencoderUpsample = Literal["nearest", "bilinear", "transpose", "bed_of_nails"]
"""The upsampling modes but "max_unpool": without skips, no pooling indices reach the decoder."""


class AutoencoderConfig(ModelConfig):
    """Options of ``autoencoder`` (:class:`~segpipe.models.autoencoder.model.Autoencoder`)."""

    depth: int = Field(3, ge=1, le=6)
    """Number of conv + 2× max-pool levels; ``output_stride`` is ``2**depth``."""
    base_channels: int = Field(16, ge=1)
    """Width of the first level; each level below doubles it."""
    bottleneck_channels: int | None = Field(None, ge=1)
    """Width of the code; None: ``base_channels * 2**depth``, a smaller value narrows the bottleneck."""
    upsample: AutoencoderUpsample = "transpose"
    """A :func:`~segpipe.models.upsampling.make_upsample` mode other than "max_unpool"."""
    batch_norm: bool = True
    """BatchNorm after every 3×3 conv."""
