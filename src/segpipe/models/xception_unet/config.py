"""Options of ``xception_unet``."""

from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator

from segpipe.models.options import ModelConfig

Width = Annotated[int, Field(ge=1)]


class XceptionUNetConfig(ModelConfig):
    """Options of ``xception_unet`` (:class:`~segpipe.models.xception_unet.model.XceptionUNet`);
    the defaults are the Keras widths halved, to train on a CPU."""

    entry_channels: int = Field(16, ge=1)
    """Width of the entry conv (Keras: 32)."""
    encoder_channels: list[Width] = Field([32, 64, 128], min_length=1, max_length=6)
    """Width of each down block (Keras: 64, 128, 256); ``output_stride`` is
    ``2**(1 + len(encoder_channels))``."""
    decoder_channels: list[Width] = Field([128, 64, 32, 16], min_length=2, max_length=7)
    """Width of each up block (Keras: 256, 128, 64, 32); one more entry than ``encoder_channels``
    so that the output is at the input size."""

    @field_validator("decoder_channels")
    @classmethod
    def _one_more_than_encoder(cls, channels: list[int], info: ValidationInfo) -> list[int]:
        encoder = info.data.get("encoder_channels")
        if encoder is not None and len(channels) != len(encoder) + 1:
            raise ValueError(
                f"needs len(encoder_channels) + 1 = {len(encoder) + 1} entries "
                f"(one upsampling per pooling, plus the entry conv's), got {len(channels)}"
            )
        return channels
