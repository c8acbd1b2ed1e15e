"""SegNet architecture."""

from segpipe.models.segnet.config import SegNetConfig, build
from segpipe.models.segnet.model import SegNet

__all__ = ["SegNet", "SegNetConfig", "build"]
