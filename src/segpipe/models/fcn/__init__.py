"""FCN-32s/16s/8s architectures."""

from segpipe.models.fcn.model import FCN

__all__ = ["FCN"]
