"""segmentation_models_pytorch baselines behind segpipe's interface, built randomly initialised (nothing is
downloaded); :mod:`segpipe.training.initialise` loads pretrained encoder weights where the options ask."""

from typing import Literal

import torch
from torch import nn

from segpipe.models.base import SegmentationNetwork
from segpipe.models.float32 import keep_edges_float32
from segpipe.models.smp.config import SmpConfig

SmpArchitecture = Literal["Unet", "FPN", "DeepLabV3Plus"]


class SmpModel(SegmentationNetwork):
    """A randomly initialised ``smp.<architecture>`` (``encoder_weights=None``) with segpipe's input
    normalisation, shape check and ``output_stride``: the encoder's, or 1 where smp accepts any size
    (smp.Unet in 0.6). State-dict keys are the smp model's, prefixed with ``network.``, and
    ``normalisation.mean`` / ``normalisation.std``. Under autocast the encoder's first convolution
    reads its input in float32 and the segmentation head returns float32 logits
    (:mod:`segpipe.models.float32`).

    Args:
        num_classes: Output channels (logits per class).
        in_channels: Input image channels.
        config: The options (the :class:`SmpConfig` subclass of ``architecture``).
        architecture: The smp class to build.
    """

    def __init__(self, num_classes: int, in_channels: int, config: SmpConfig, architecture: SmpArchitecture):
        import segmentation_models_pytorch as smp  # only where an smp model is built

        network = getattr(smp, architecture)(
            encoder_name=config.encoder,
            encoder_weights=None,
            in_channels=in_channels,
            classes=num_classes,
            **config.decoder_options(),
        )
        divisible = network.requires_divisible_input_shape
        super().__init__(network.encoder.output_stride if divisible else 1, in_channels)
        keep_edges_float32(network.encoder, network.segmentation_head)
        self.network = network

    def encoder_module(self) -> nn.Module:
        return self.network.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        return self.network(self.normalisation(x))
