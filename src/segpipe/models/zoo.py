"""Architecture registry: option validation and model construction by name."""

import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from segpipe.models import autoencoder, dilated, segnet, xception_unet
from segpipe.models.base import SegmentationNetwork
from segpipe.models.fcn import FCN
from segpipe.models.smp_baselines import (
    SmpDeepLabV3PlusConfig,
    SmpFPNConfig,
    SmpUnetConfig,
    build_smp,
)
from segpipe.models.unet import UNet
from segpipe.models.upsampling import UpsampleMode


class UNetConfig(BaseModel):
    """Options of ``unet``; see :class:`segpipe.models.unet.UNet`."""

    model_config = ConfigDict(extra="forbid")

    depth: int = Field(default=4, ge=1, le=6)
    base_channels: int = Field(default=16, ge=1)
    upsample: UpsampleMode = "transpose"
    batch_norm: bool = True


class FCNConfig(BaseModel):
    """Options of ``fcn32s``/``fcn16s``/``fcn8s``; see :class:`segpipe.models.fcn.FCN`."""

    model_config = ConfigDict(extra="forbid")

    width: float = Field(default=0.25, gt=0, le=1)
    fc_channels: int | None = Field(default=None, ge=1)
    dropout: float = Field(default=0.5, ge=0, lt=1)
    batch_norm: bool = True


Builder = Callable[[Any, int, int], SegmentationNetwork]  # (config, num_classes, in_channels)


@dataclass(frozen=True)
class ArchitectureSpec:
    name: str
    family: Literal["builtin", "smp"]  # builtin: segpipe's own; smp: segmentation_models_pytorch
    config_cls: type[BaseModel]
    builder: Builder


def _build_unet(config: UNetConfig, num_classes: int, in_channels: int) -> UNet:
    return UNet(num_classes, in_channels, **config.model_dump())


def _build_fcn(variant: int, config: FCNConfig, num_classes: int, in_channels: int) -> FCN:
    return FCN(num_classes, in_channels, variant=variant, **config.model_dump())


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.name: spec
    for spec in (
        ArchitectureSpec("unet", "builtin", UNetConfig, _build_unet),
        ArchitectureSpec("fcn32s", "builtin", FCNConfig, partial(_build_fcn, 32)),
        ArchitectureSpec("fcn16s", "builtin", FCNConfig, partial(_build_fcn, 16)),
        ArchitectureSpec("fcn8s", "builtin", FCNConfig, partial(_build_fcn, 8)),
        ArchitectureSpec("autoencoder", "builtin", autoencoder.AutoencoderConfig, autoencoder.build),
        ArchitectureSpec("segnet", "builtin", segnet.SegNetConfig, segnet.build),
        ArchitectureSpec("xception_unet", "builtin", xception_unet.XceptionUNetConfig, xception_unet.build),
        ArchitectureSpec("dilated", "builtin", dilated.DilatedNetConfig, dilated.build),
        ArchitectureSpec("smp_unet", "smp", SmpUnetConfig, partial(build_smp, "Unet")),
        ArchitectureSpec("smp_fpn", "smp", SmpFPNConfig, partial(build_smp, "FPN")),
        ArchitectureSpec(
            "smp_deeplabv3plus",
            "smp",
            SmpDeepLabV3PlusConfig,
            partial(build_smp, "DeepLabV3Plus"),
        ),
    )
}


def available_architectures() -> list[str]:
    return list(ARCHITECTURES)


def get_architecture(name: str) -> ArchitectureSpec:
    """The spec registered as ``name``; ValueError listing the valid names otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"Unknown architecture {name!r}; available: {', '.join(ARCHITECTURES)}"
        ) from None


def architecture_family(name: str) -> str:
    return get_architecture(name).family


_SHORT = reprlib.Repr()  # a bad value shown in an error without pages of nested data
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 3, 6, 6, 60, 60


def validate_model_options(name: str, options: Mapping[str, Any] | None) -> BaseModel:
    """Typed config for ``name`` from ``train.models.<name>`` options (None: all defaults).

    Raises ValueError naming every offending key with the allowed keys, values or type.
    """
    spec = get_architecture(name)
    prefix = f"train.models.{name}"
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ValueError(f"{prefix}: expected a mapping of options, got {type(options).__name__}")
    try:
        return spec.config_cls.model_validate(dict(options))
    except ValidationError as error:
        allowed = ", ".join(spec.config_cls.model_fields)
        problems = []
        for problem in error.errors():
            key = ".".join(str(part) for part in problem["loc"])
            if problem["type"] == "extra_forbidden":
                problems.append(f"{prefix}.{key}: unknown option; allowed options: {allowed}")
            else:
                problems.append(f"{prefix}.{key}: {problem['msg']} (got {_SHORT.repr(problem['input'])})")
        raise ValueError("Invalid model options:\n" + "\n".join(problems)) from None


def build_model(
    name: str, num_classes: int, in_channels: int = 3, options: Mapping[str, Any] | None = None
) -> SegmentationNetwork:
    """Build architecture ``name`` with validated ``options``; returns logits at the input size."""
    config = validate_model_options(name, options)
    return get_architecture(name).builder(config, num_classes, in_channels)
