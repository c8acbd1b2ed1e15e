"""Options of ``segnet`` and its builder."""

from pydantic import BaseModel, ConfigDict, Field

from segpipe.models.segnet.model import SegNet
from segpipe.models.upsampling import UpsampleMode


class SegNetConfig(BaseModel):
    """Options of ``segnet``; see :class:`SegNet` (defaults: VGG-16-BN at a quarter width)."""

    model_config = ConfigDict(extra="forbid")

    blocks: int = Field(default=5, ge=1, le=5)
    width: float = Field(default=0.25, gt=0, le=1)
    upsample: UpsampleMode = "max_unpool"
    batch_norm: bool = True


def build(config: SegNetConfig, num_classes: int, in_channels: int) -> SegNet:
    return SegNet(num_classes, in_channels, **config.model_dump())
