"""segmentation_models_pytorch baselines, always randomly initialised (nothing is downloaded)."""

import difflib
from typing import Literal

import segmentation_models_pytorch as smp
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from segpipe.models.base import SegmentationNetwork


class SmpConfig(BaseModel):
    """Options shared by the smp baselines; other fields map 1:1 onto the smp constructor."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = "resnet18"

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, name: str) -> str:
        known = smp.encoders.get_encoder_names()
        if name in known or name.startswith("tu-"):
            return name
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        raise ValueError(
            f"unknown smp encoder {name!r}"
            + (f"; did you mean {', '.join(close)}?" if close else "")
            + " Use a name from smp.encoders.get_encoder_names() or 'tu-<timm model>'."
        )


class SmpUnetConfig(SmpConfig):
    decoder_channels: list[int] = Field(default=[256, 128, 64, 32, 16], min_length=5, max_length=5)
    decoder_attention_type: Literal["scse"] | None = None


class SmpFPNConfig(SmpConfig):
    decoder_pyramid_channels: int = Field(default=256, ge=1)
    # smp normalises these with GroupNorm(32, channels)
    decoder_segmentation_channels: int = Field(default=128, ge=32, multiple_of=32)
    decoder_dropout: float = Field(default=0.2, ge=0, lt=1)


class SmpDeepLabV3PlusConfig(SmpConfig):
    encoder_output_stride: Literal[8, 16] = 16
    decoder_channels: int = Field(default=256, ge=1)
    decoder_atrous_rates: list[int] = Field(default=[12, 24, 36], min_length=3, max_length=3)


class SmpModel(SegmentationNetwork):
    """An smp model behind segpipe's interface (ValueError shape check, ``output_stride``).

    ``output_stride`` is the encoder's, or 1 where smp accepts any size (smp.Unet in 0.6).
    State-dict keys are the smp model's, prefixed with ``network.``.
    """

    def __init__(self, network: smp.base.SegmentationModel):
        divisible = network.requires_divisible_input_shape
        super().__init__(output_stride=network.encoder.output_stride if divisible else 1)
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        return self.network(x)


def build_smp(
    architecture: type[smp.base.SegmentationModel],
    config: SmpConfig,
    num_classes: int,
    in_channels: int,
) -> SmpModel:
    """Randomly initialised ``architecture`` (``encoder_weights=None``) wrapped in SmpModel."""
    network = architecture(
        encoder_name=config.encoder,
        encoder_weights=None,
        in_channels=in_channels,
        classes=num_classes,
        **config.model_dump(exclude={"encoder"}),
    )
    return SmpModel(network)
