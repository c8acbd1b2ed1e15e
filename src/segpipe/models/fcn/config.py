"""Options of ``fcn32s``, ``fcn16s`` and ``fcn8s``."""

from pydantic import Field

from segpipe.models.options import ModelConfig


class FCNConfig(ModelConfig):
    """Options of ``fcn32s``/``fcn16s``/``fcn8s`` (:class:`~segpipe.models.fcn.model.FCN`)."""

    width: float = Field(0.25, gt=0, le=1)
    """Multiplier on VGG-16's channels (64…512 and 4096), at least 8 each."""
    fc_channels: int | None = Field(None, ge=1)
    """fc6/fc7 channels; None: ``round(4096 * width)``."""
    dropout: float = Field(0.5, ge=0, lt=1)
    """Dropout probability after fc6 and fc7."""
    batch_norm: bool = True
    """BatchNorm after every encoder conv (VGG-16-BN); False is the original VGG-16."""
