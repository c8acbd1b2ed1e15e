"""The architecture table: each name maps to its family, option class and model class.

Names and option classes import without torch, so ``params.yaml`` is checked (names and options) before
any stage loads torch; the model class is imported when a model is built.
"""

from __future__ import annotations

import importlib
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from segpipe.models.autoencoder.config import AutoencoderConfig
from segpipe.models.dilated.config import DilatedNetConfig
from segpipe.models.fcn.config import FCNConfig
from segpipe.models.options import ModelConfig
from segpipe.models.segnet.config import SegNetConfig
from segpipe.models.smp.config import SmpDeepLabV3PlusConfig, SmpFPNConfig, SmpUnetConfig
from segpipe.models.unet.config import UNetConfig
from segpipe.models.xception_unet.config import XceptionUNetConfig

if TYPE_CHECKING:
    from segpipe.models.base import SegmentationNetwork


@dataclass(frozen=True)
class ArchitectureSpec:
    """One architecture: built as ``model(num_classes, in_channels, config, **fixed)``."""

    name: str
    family: Literal["builtin", "smp"]  # builtin: segpipe's own; smp: segmentation_models_pytorch
    config_cls: type[ModelConfig]
    model: str  # "module:Class"
    fixed: Mapping[str, Any] = field(default_factory=dict)  # constructor arguments set by the name

    def model_class(self) -> type[SegmentationNetwork]:
        module, _, name = self.model.partition(":")
        return getattr(importlib.import_module(module), name)


_FCN = "segpipe.models.fcn.model:FCN"
_SMP = "segpipe.models.smp.model:SmpModel"
ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.name: spec
    for spec in (
        ArchitectureSpec("unet", "builtin", UNetConfig, "segpipe.models.unet.model:UNet"),
        ArchitectureSpec("fcn32s", "builtin", FCNConfig, _FCN, {"variant": 32}),
        ArchitectureSpec("fcn16s", "builtin", FCNConfig, _FCN, {"variant": 16}),
        ArchitectureSpec("fcn8s", "builtin", FCNConfig, _FCN, {"variant": 8}),
        ArchitectureSpec(
            "autoencoder", "builtin", AutoencoderConfig, "segpipe.models.autoencoder.model:Autoencoder"
        ),
        ArchitectureSpec("segnet", "builtin", SegNetConfig, "segpipe.models.segnet.model:SegNet"),
        ArchitectureSpec(
            "xception_unet", "builtin", XceptionUNetConfig, "segpipe.models.xception_unet.model:XceptionUNet"
        ),
        ArchitectureSpec("dilated", "builtin", DilatedNetConfig, "segpipe.models.dilated.model:DilatedNet"),
        ArchitectureSpec("smp_unet", "smp", SmpUnetConfig, _SMP, {"architecture": "Unet"}),
        ArchitectureSpec("smp_fpn", "smp", SmpFPNConfig, _SMP, {"architecture": "FPN"}),
        ArchitectureSpec(
            "smp_deeplabv3plus", "smp", SmpDeepLabV3PlusConfig, _SMP, {"architecture": "DeepLabV3Plus"}
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
        raise ValueError(f"Unknown architecture {name!r}; available: {', '.join(ARCHITECTURES)}") from None


def architecture_family(name: str) -> str:
    return get_architecture(name).family


_SHORT = reprlib.Repr()  # a bad value shown in an error without pages of nested data
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 3, 6, 6, 60, 60


def validate_model_options(name: str, options: Mapping[str, Any] | None) -> ModelConfig:
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
            key = "".join(f".{part}" for part in problem["loc"])  # empty: a rule joining several options
            if problem["type"] == "extra_forbidden":
                problems.append(f"{prefix}{key}: unknown option; allowed options: {allowed}")
            elif not key:
                problems.append(f"{prefix}: {problem['msg'].removeprefix('Value error, ')}")
            else:
                problems.append(f"{prefix}{key}: {problem['msg']} (got {_SHORT.repr(problem['input'])})")
        raise ValueError("Invalid model options:\n" + "\n".join(problems)) from None


def build_model(
    name: str, num_classes: int, in_channels: int = 3, options: Mapping[str, Any] | None = None
) -> SegmentationNetwork:
    """Build architecture ``name`` with validated ``options``; returns logits at the input size."""
    config = validate_model_options(name, options)
    spec = get_architecture(name)
    return spec.model_class()(num_classes, in_channels, config, **spec.fixed)
