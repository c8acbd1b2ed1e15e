"""Options of ``autoencoder`` and its builder."""

from pydantic import BaseModel, ConfigDict, Field

from segpipe.models.autoencoder.model import Autoencoder, AutoencoderUpsample


class AutoencoderConfig(BaseModel):
    """Options of ``autoencoder``; see :class:`Autoencoder`."""

    model_config = ConfigDict(extra="forbid")

    depth: int = Field(default=3, ge=1, le=6)
    base_channels: int = Field(default=16, ge=1)
    bottleneck_channels: int | None = Field(default=None, ge=1)
    upsample: AutoencoderUpsample = "transpose"
    batch_norm: bool = True


def build(config: AutoencoderConfig, num_classes: int, in_channels: int) -> Autoencoder:
    """Segmentation build (the registry's signature): ``num_classes`` logit maps."""
    return Autoencoder(num_classes, in_channels, **config.model_dump())
