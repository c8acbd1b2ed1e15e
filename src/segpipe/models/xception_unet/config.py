"""Options of ``xception_unet`` and its builder."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from segpipe.models.xception_unet.model import XceptionUNet

Width = Annotated[int, Field(ge=1)]


class XceptionUNetConfig(BaseModel):
    """Options of ``xception_unet``; see :class:`XceptionUNet` (defaults: Keras widths halved)."""

    model_config = ConfigDict(extra="forbid")

    entry_channels: int = Field(default=16, ge=1)
    encoder_channels: list[Width] = Field(default=[32, 64, 128], min_length=1, max_length=6)
    decoder_channels: list[Width] = Field(default=[128, 64, 32, 16], min_length=2, max_length=7)

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


def build(config: XceptionUNetConfig, num_classes: int, in_channels: int) -> XceptionUNet:
    return XceptionUNet(num_classes, in_channels, **config.model_dump())
