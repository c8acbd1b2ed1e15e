"""Dilated (atrous) context network."""

from segpipe.models.dilated.config import DilatedNetConfig, build
from segpipe.models.dilated.model import DilatedNet

__all__ = ["DilatedNet", "DilatedNetConfig", "build"]
