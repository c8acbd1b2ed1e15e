"""Options of ``dilated``."""

from typing import Annotated, Literal

from pydantic import Field

from segpipe.models.options import ModelConfig

DilatedUpsample = Literal["bilinear", "transpose"]


class DilatedNetConfig(ModelConfig):
    """Options of ``dilated`` (:class:`~segpipe.models.dilated.model.DilatedNet`)."""

    base_channels: int = Field(16, ge=1)
    """Width of the first front-end block (doubling per block) and of the upsampled features the
    head scores."""
    front_downsamples: int = Field(2, ge=1, le=5)
    """Front-end 2×2 max-pools; ``output_stride`` is ``2**front_downsamples``."""
    dilations: list[Annotated[int, Field(ge=1)]] = Field([1, 2, 4, 8, 16], min_length=1)
    """Dilation rate of each context conv (padding = rate, resolution kept)."""
    context_channels: int = Field(64, ge=1)
    """Width of the context convs."""
    upsample: DilatedUpsample = "bilinear"
    """"bilinear" (interpolation + 3×3 conv) or "transpose" (transposed conv with kernel
    2·stride, stride ``output_stride``)."""
    batch_norm: bool = True
    """BatchNorm after every conv except the head."""
