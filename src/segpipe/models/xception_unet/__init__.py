"""Xception-style U-Net (the Keras Oxford-Pets segmentation example)."""

from segpipe.models.xception_unet.config import XceptionUNetConfig, build
from segpipe.models.xception_unet.model import XceptionUNet

__all__ = ["XceptionUNet", "XceptionUNetConfig", "build"]
