"""Xception-style encoder: a strided entry conv, then residual depthwise-separable blocks."""

from collections.abc import Sequence

import torch
from torch import nn


class SeparableConv2d(nn.Module):
    """Depthwise 3×3 conv (one filter per input channel) then pointwise 1×1 conv; no biases,
    as a BatchNorm always follows."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ResidualBlock(nn.Module):
    """``main(x) + shortcut(x)``."""

    def __init__(self, main: nn.Module, shortcut: nn.Module):
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.shortcut(x)


def down_block(in_channels: int, out_channels: int) -> ResidualBlock:
    """ReLU, 2 × (separable conv + BN) with a ReLU between, 3×3 stride-2 max-pool; shortcut:
    1×1 stride-2 conv. Halves the resolution."""
    main = nn.Sequential(
        nn.ReLU(),  # not in-place: the shortcut reads the same input
        SeparableConv2d(in_channels, out_channels),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        SeparableConv2d(out_channels, out_channels),
        nn.BatchNorm2d(out_channels),
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    return ResidualBlock(main, nn.Conv2d(in_channels, out_channels, 1, stride=2))


class XceptionEncoder(nn.Module):
    """Entry 3×3 stride-2 conv + BN + ReLU, then one ``down_block`` per ``channels`` entry.
    Returns the bottleneck at stride ``2**(1 + len(channels))`` with ``channels[-1]`` channels."""

    def __init__(self, in_channels: int, entry_channels: int, channels: Sequence[int]):
        super().__init__()
        widths = [entry_channels, *channels]
        self.entry = nn.Sequential(
            nn.Conv2d(in_channels, entry_channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(entry_channels),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.Sequential(*map(down_block, widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.entry(x))
