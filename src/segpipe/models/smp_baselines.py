"""segmentation_models_pytorch baselines, always randomly initialised (nothing is downloaded)."""

import difflib
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from segpipe.models.base import SegmentationNetwork

if TYPE_CHECKING:
    import segmentation_models_pytorch as smp

# smp.encoders.get_encoder_names() of the pinned smp 0.6.0 (tests keep it equal). Listing them here lets
# params be validated without importing smp, timm and torchvision (~2 s) in every pipeline stage.
ENCODER_NAMES: frozenset[str] = frozenset({
    'densenet121', 'densenet161', 'densenet169', 'densenet201', 'dpn107', 'dpn131', 'dpn68',
    'dpn68b', 'dpn92', 'dpn98', 'efficientnet-b0', 'efficientnet-b1', 'efficientnet-b2',
    'efficientnet-b3', 'efficientnet-b4', 'efficientnet-b5', 'efficientnet-b6', 'efficientnet-b7',
    'inceptionresnetv2', 'inceptionv4', 'mit_b0', 'mit_b1', 'mit_b2', 'mit_b3', 'mit_b4', 'mit_b5',
    'mobilenet_v2', 'mobileone_s0', 'mobileone_s1', 'mobileone_s2', 'mobileone_s3', 'mobileone_s4',
    'resnet101', 'resnet152', 'resnet18', 'resnet34', 'resnet50', 'resnext101_32x16d',
    'resnext101_32x32d', 'resnext101_32x48d', 'resnext101_32x4d', 'resnext101_32x8d',
    'resnext50_32x4d', 'se_resnet101', 'se_resnet152', 'se_resnet50', 'se_resnext101_32x4d',
    'se_resnext50_32x4d', 'senet154', 'timm-efficientnet-b0', 'timm-efficientnet-b1',
    'timm-efficientnet-b2', 'timm-efficientnet-b3', 'timm-efficientnet-b4', 'timm-efficientnet-b5',
    'timm-efficientnet-b6', 'timm-efficientnet-b7', 'timm-efficientnet-b8', 'timm-efficientnet-l2',
    'timm-skresnet18', 'timm-skresnet34', 'timm-skresnext50_32x4d', 'timm-tf_efficientnet_lite0',
    'timm-tf_efficientnet_lite1', 'timm-tf_efficientnet_lite2', 'timm-tf_efficientnet_lite3',
    'timm-tf_efficientnet_lite4', 'vgg11', 'vgg11_bn', 'vgg13', 'vgg13_bn', 'vgg16', 'vgg16_bn',
    'vgg19', 'vgg19_bn', 'xception'
})


class SmpConfig(BaseModel):
    """Options shared by the smp baselines; other fields map 1:1 onto the smp constructor."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = "resnet18"

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, name: str) -> str:
        known = sorted(ENCODER_NAMES)
        if name in ENCODER_NAMES or name.startswith("tu-"):
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

    def __init__(self, network: "smp.base.SegmentationModel"):
        divisible = network.requires_divisible_input_shape
        super().__init__(output_stride=network.encoder.output_stride if divisible else 1)
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        return self.network(x)


def build_smp(
    architecture: Literal["Unet", "FPN", "DeepLabV3Plus"],
    config: SmpConfig,
    num_classes: int,
    in_channels: int,
) -> SmpModel:
    """Randomly initialised ``smp.<architecture>`` (``encoder_weights=None``) wrapped in SmpModel."""
    import segmentation_models_pytorch as smp  # only where an smp model is built

    network = getattr(smp, architecture)(
        encoder_name=config.encoder,
        encoder_weights=None,
        in_channels=in_channels,
        classes=num_classes,
        **config.model_dump(exclude={"encoder"}),
    )
    return SmpModel(network)
