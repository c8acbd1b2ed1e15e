"""Any architecture as an image-to-image model (``task: denoise``)."""

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from segpipe.models.base import InputNormalisation, SegmentationNetwork
from segpipe.models.zoo import build_model


class ReconstructionModel(nn.Module):
    """Wraps a network built with ``num_classes = in_channels``; outputs an image in [0, 1] (sigmoid)."""

    def __init__(self, network: SegmentationNetwork):
        super().__init__()
        self.network = network
        self.output_stride = network.output_stride

    @property
    def normalisation(self) -> InputNormalisation:
        """The wrapped network's input normalisation."""
        return self.network.normalisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.network(x))


def build_reconstruction_model(
    name: str, in_channels: int = 3, options: Mapping[str, Any] | None = None
) -> ReconstructionModel:
    """Architecture ``name`` mapping [N, in_channels, H, W] images to images of the same shape."""
    return ReconstructionModel(build_model(name, in_channels, in_channels, options))
