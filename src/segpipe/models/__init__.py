"""Segmentation models: segpipe's own architectures and smp baselines, built by name.

The architecture table and option classes import without torch (params are checked before a stage
loads torch); the names below that need torch load it on first use.
"""

import importlib
from typing import TYPE_CHECKING, Any

from segpipe.models.zoo import available_architectures, build_model, validate_model_options

if TYPE_CHECKING:
    from segpipe.models.base import count_params_m
    from segpipe.models.reconstruction import ReconstructionModel, build_reconstruction_model

_NEEDS_TORCH = {
    "count_params_m": "segpipe.models.base",
    "ReconstructionModel": "segpipe.models.reconstruction",
    "build_reconstruction_model": "segpipe.models.reconstruction",
}

__all__ = [
    "ReconstructionModel",
    "available_architectures",
    "build_model",
    "build_reconstruction_model",
    "count_params_m",
    "validate_model_options",
]


def __getattr__(name: str) -> Any:
    if name in _NEEDS_TORCH:
        return getattr(importlib.import_module(_NEEDS_TORCH[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
