"""Segmentation models: segpipe's own architectures and smp baselines, built by name."""

from segpipe.models.base import count_params_m
from segpipe.models.reconstruction import ReconstructionModel, build_reconstruction_model
from segpipe.models.zoo import available_architectures, build_model, validate_model_options

__all__ = [
    "ReconstructionModel",
    "available_architectures",
    "build_model",
    "build_reconstruction_model",
    "count_params_m",
    "validate_model_options",
]
