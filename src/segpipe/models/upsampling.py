"""Upsampling operators shared by the decoders, chosen by name with ``make_upsample``.

Every upsampler maps [N, in_channels, H, W] to [N, out_channels, factor·H, factor·W] and is
called as ``upsample(x, indices=None)``; only ``max_unpool`` needs ``indices``, the others
ignore them, so a decoder can pass its encoder's pooling indices whatever the mode.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from segpipe.models.float32 import in_float32
from segpipe.models.options import UPSAMPLE_MODES, UpsampleMode


class Interpolate(nn.Module):
    """Nearest-neighbour or bilinear (``align_corners=False``) interpolation by ``factor``."""

    def __init__(self, mode: Literal["nearest", "bilinear"], factor: int):
        super().__init__()
        self.mode = mode
        self.factor = factor

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        align_corners = False if self.mode == "bilinear" else None
        return F.interpolate(x, scale_factor=self.factor, mode=self.mode, align_corners=align_corners)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, factor={self.factor}"


class BedOfNails(nn.Module):
    """Puts each input value at the top-left corner of its ``factor``×``factor`` output block,
    zeros elsewhere: ``out[..., ::factor, ::factor] == x``."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        k = self.factor
        out = x.new_zeros(*x.shape[:-2], k * x.shape[-2], k * x.shape[-1])
        out[..., ::k, ::k] = x
        return out

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class MaxUnpool(nn.MaxUnpool2d):
    """Puts each value back at the position its ``nn.MaxPool2d(factor, return_indices=True)``
    took it from, zeros elsewhere; ``indices`` are that pooling's indices."""

    def __init__(self, factor: int):
        super().__init__(kernel_size=factor, stride=factor)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        if indices is None:
            raise ValueError(
                "max_unpool upsampling needs the indices of the matching "
                "nn.MaxPool2d(return_indices=True); got indices=None"
            )
        return super().forward(x, indices)


class StridedConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` that runs in float32 under CPU autocast when its stride is above 2.

    oneDNN's bf16 gradient with respect to the input of such a layer is wrong on CPUs with native bf16
    (relative error ~1 for kernel 2·s / stride s >= 8 and kernel = stride = 4, torch 2.14): FCN-16s/8s
    diverged under bf16 autocast. Stride 2 is exact and keeps bf16.
    """

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if max(self.stride) > 2 and x.device.type == "cpu":
            return in_float32(super().forward, x, output_size)
        return super().forward(x, output_size)


class TransposeUpsample(StridedConvTranspose2d):
    """Learned upsampling: a transposed conv with kernel = stride = ``factor``, so each input
    pixel paints its own ``factor``×``factor`` output block (no overlap, no checkerboard);
    PyTorch's default initialisation."""

    def __init__(self, in_channels: int, out_channels: int, factor: int):
        super().__init__(in_channels, out_channels, kernel_size=factor, stride=factor)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class ProjectThenResample(nn.Sequential):
    """A 1×1 conv changing the channels at the input resolution, then a parameter-free
    upsampler (``Interpolate``, ``BedOfNails`` or ``MaxUnpool``)."""

    def __init__(self, project: nn.Conv2d, resample: nn.Module):
        super().__init__(project, resample)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        project, resample = self
        return resample(project(x), indices)


def make_upsample(mode: UpsampleMode, in_channels: int, out_channels: int, factor: int = 2) -> nn.Module:
    """Upsampler ``mode`` from ``in_channels`` to ``out_channels`` by ``factor``.

    ``transpose`` changes the channels itself. The parameter-free modes (``nearest``,
    ``bilinear``, ``bed_of_nails``, ``max_unpool``) are preceded by a 1×1 conv when the channels
    change: convolving before upsampling costs ``factor²`` times less, gives the same result for
    the interpolations, keeps the exact zero pattern of ``bed_of_nails``/``max_unpool``, and makes
    ``max_unpool``'s indices those of a pooling over ``out_channels`` channels.
    """
    if mode == "transpose":
        return TransposeUpsample(in_channels, out_channels, factor)
    resample: nn.Module
    if mode in ("nearest", "bilinear"):
        resample = Interpolate(mode, factor)
    elif mode == "bed_of_nails":
        resample = BedOfNails(factor)
    elif mode == "max_unpool":
        resample = MaxUnpool(factor)
    else:
        raise ValueError(f"Unknown upsample mode {mode!r}; available: {', '.join(UPSAMPLE_MODES)}")
    if in_channels == out_channels:
        return resample
    return ProjectThenResample(nn.Conv2d(in_channels, out_channels, kernel_size=1), resample)
