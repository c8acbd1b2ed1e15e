"""Segmentation models: segpipe's own architectures and smp baselines, built by name."""

from segpipe.models.registry import available_architectures, build_model, validate_model_options

__all__ = ["available_architectures", "build_model", "validate_model_options"]
