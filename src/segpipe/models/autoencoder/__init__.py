"""Convolutional autoencoder architecture."""

from segpipe.models.autoencoder.config import AutoencoderConfig, build
from segpipe.models.autoencoder.model import Autoencoder

__all__ = ["Autoencoder", "AutoencoderConfig", "build"]
