"""Options of ``dilated`` and its builder."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from segpipe.models.dilated.model import DilatedNet


class DilatedNetConfig(BaseModel):
    """Options of ``dilated``; see :class:`DilatedNet`."""

    model_config = ConfigDict(extra="forbid")

    base_channels: int = Field(default=16, ge=1)
    front_downsamples: int = Field(default=2, ge=1, le=5)
    dilations: list[Annotated[int, Field(ge=1)]] = Field(default=[1, 2, 4, 8, 16], min_length=1)
    context_channels: int = Field(default=64, ge=1)
    upsample: Literal["bilinear", "transpose"] = "bilinear"
    batch_norm: bool = True


def build(config: DilatedNetConfig, num_classes: int, in_channels: int) -> DilatedNet:
    return DilatedNet(num_classes, in_channels, **config.model_dump())
