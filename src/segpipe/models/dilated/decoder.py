"""Context module of dilated convolutions, and the upsampling back to the input size."""

from collections.abc import Sequence

import torch
from torch import nn

from segpipe.models.dilated.config import DilatedUpsample
from segpipe.models.upsampling import StridedConvTranspose2d


def conv_norm_relu(conv: nn.Conv2d | nn.ConvTranspose2d, batch_norm: bool) -> nn.Sequential:
    """``conv`` [+ BatchNorm] + ReLU; ``conv`` must have a bias exactly when there is no BN."""
    norm = [nn.BatchNorm2d(conv.out_channels)] if batch_norm else []
    return nn.Sequential(conv, *norm, nn.ReLU(inplace=True))


class ContextModule(nn.Sequential):
    """One 3×3 conv [+ BatchNorm] + ReLU per rate in ``dilations``, all ``channels`` wide.
    Padding equals the dilation, so the resolution never changes while the receptive field
    grows by ``2 * dilation`` per layer."""

    def __init__(self, in_channels: int, channels: int, dilations: Sequence[int], batch_norm: bool):
        super().__init__(
            *(
                conv_norm_relu(
                    nn.Conv2d(
                        channels if index else in_channels,
                        channels,
                        3,
                        padding=dilation,
                        dilation=dilation,
                        bias=not batch_norm,
                    ),
                    batch_norm,
                )
                for index, dilation in enumerate(dilations)
            )
        )


def upsampler(
    mode: DilatedUpsample, in_channels: int, out_channels: int, factor: int, batch_norm: bool
) -> nn.Sequential:
    """×``factor`` (even) upsampling to ``out_channels`` [+ BatchNorm] + ReLU: bilinear
    interpolation then a 3×3 conv, or a transposed conv (kernel 2·factor, stride factor)."""
    if mode == "transpose":
        return conv_norm_relu(
            StridedConvTranspose2d(
                in_channels,
                out_channels,
                2 * factor,
                stride=factor,
                padding=factor // 2,
                bias=not batch_norm,
            ),
            batch_norm,
        )
    return nn.Sequential(
        nn.Upsample(scale_factor=factor, mode="bilinear", align_corners=False),
        conv_norm_relu(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm), batch_norm),
    )


class DilatedDecoder(nn.Module):
    """``context`` (a :class:`ContextModule`) at the front end's stride, then ``upsample`` by
    ``factor`` to ``out_channels`` at the input size."""

    def __init__(
        self,
        in_channels: int,
        context_channels: int,
        dilations: Sequence[int],
        out_channels: int,
        factor: int,
        upsample: DilatedUpsample,
        batch_norm: bool,
    ):
        super().__init__()
        self.context = ContextModule(in_channels, context_channels, dilations, batch_norm)
        self.upsample = upsampler(upsample, context_channels, out_channels, factor, batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.context(x))
