"""Options of ``unet``."""

from pydantic import Field

from segpipe.models.options import ModelConfig, UpsampleMode


class UNetConfig(ModelConfig):
    """Options of ``unet`` (:class:`~segpipe.models.unet.model.UNet`)."""

    depth: int = Field(4, ge=1, le=6)
    """Number of 2× poolings; ``output_stride`` is ``2**depth``."""
    base_channels: int = Field(16, ge=1)
    """Width of the first level; each level below doubles it."""
    upsample: UpsampleMode = "transpose"
    """"transpose" (2×2 stride-2 transposed conv), or a 1×1 conv followed by "nearest"/"bilinear"
    interpolation, "bed_of_nails" or "max_unpool" (with the same level's pooling indices); each
    upsampling halves the channels."""
    batch_norm: bool = True
    """BatchNorm after every 3×3 conv."""
