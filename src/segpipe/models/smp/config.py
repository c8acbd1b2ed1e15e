"""Options of the segmentation_models_pytorch baselines ``smp_unet``, ``smp_fpn`` and
``smp_deeplabv3plus``: the decoder fields map 1:1 onto the smp constructor's arguments; ``encoder_weights*``
and ``init`` say how the encoder starts (:mod:`segpipe.training.initialise`)."""

import difflib
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from segpipe.models.options import ModelConfig

# smp.encoders.get_encoder_names() of the pinned smp 0.6.0 (tests keep it equal). Listing them here lets
# params be validated without importing smp, timm and torchvision (~2 s) in every pipeline stage.
# fmt: off
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
# fmt: on


class SmpConfig(ModelConfig):
    """Options shared by the smp baselines."""

    encoder: str = "resnet18"
    """An smp encoder (``smp.encoders.get_encoder_names()``) or ``tu-<timm model>``; randomly initialised
    unless ``encoder_weights``, ``encoder_weights_file`` or ``init: pretrain`` says otherwise."""
    encoder_weights: str | None = None
    """Pretrained weights smp downloads at the start of training (e.g. ``imagenet``); inputs are then
    normalised with the ImageNet mean and std."""
    encoder_weights_file: str | None = None
    """A local ``.safetensors`` file of the encoder's state dict, loaded strictly (never a pickle); inputs
    are then normalised with the ImageNet mean and std."""
    encoder_weights_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """The sha256 of ``encoder_weights_file`` (required with it): a changed file is refused, and a new hash
    here makes DVC re-run the training."""

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

    @model_validator(mode="after")
    def _one_encoder_source(self) -> "SmpConfig":
        sources = [
            name
            for name, given in (
                ("encoder_weights", self.encoder_weights is not None),
                ("encoder_weights_file", self.encoder_weights_file is not None),
                ("init: pretrain", self.init == "pretrain"),
            )
            if given
        ]
        if len(sources) > 1:
            raise ValueError(f"{' and '.join(sources)} both initialise the encoder; keep one")
        if (self.encoder_weights_file is None) != (self.encoder_weights_sha256 is None):
            raise ValueError(
                "encoder_weights_file and encoder_weights_sha256 go together: give the file's sha256 "
                "(`sha256sum <file>`) so that DVC re-runs the training when the file changes"
            )
        return self

    def decoder_options(self) -> dict[str, Any]:
        """The smp constructor's keyword arguments besides the encoder's name and weights."""
        return self.model_dump(exclude=set(SmpConfig.model_fields))


class SmpUnetConfig(SmpConfig):
    """Options of ``smp_unet`` (``smp.Unet``)."""

    decoder_channels: list[int] = Field([256, 128, 64, 32, 16], min_length=5, max_length=5)
    decoder_attention_type: Literal["scse"] | None = None


class SmpFPNConfig(SmpConfig):
    """Options of ``smp_fpn`` (``smp.FPN``)."""

    decoder_pyramid_channels: int = Field(256, ge=1)
    decoder_segmentation_channels: int = Field(128, ge=32, multiple_of=32)
    """smp normalises these with GroupNorm(32, channels)."""
    decoder_dropout: float = Field(0.2, ge=0, lt=1)


class SmpDeepLabV3PlusConfig(SmpConfig):
    """Options of ``smp_deeplabv3plus`` (``smp.DeepLabV3Plus``)."""

    encoder_output_stride: Literal[8, 16] = 16
    decoder_channels: int = Field(256, ge=1)
    decoder_atrous_rates: list[int] = Field([12, 24, 36], min_length=3, max_length=3)
