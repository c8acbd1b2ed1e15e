"""U-Net architecture."""

from segpipe.models.unet.model import UNet

__all__ = ["UNet"]
