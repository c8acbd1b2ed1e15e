"""Segmentation logits for whole images: one pass or a sliding window, optionally with flip test-time
augmentation (``evaluate.inference``, ``evaluate.window``, ``evaluate.stride``, ``evaluate.tta``).

:func:`predict_logits` is the one entry point; evaluate, predict and promotion all call it, so a model is
scored and served with the same inference. It needs torch and the model only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from segpipe.config import EvaluateParams

InferenceMode = Literal["whole", "slide"]
TTA_KINDS = ("hflip",)


@dataclass(frozen=True)
class InferenceSettings:
    """How logits are computed: ``whole`` image at once or ``slide`` (``window``-sized tiles ``stride``
    apart, default half the window, logits averaged where tiles overlap), plus test-time augmentation."""

    mode: InferenceMode = "whole"
    window: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    tta: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode == "slide" and self.window is None:
            raise ValueError("sliding-window inference needs a window: [height, width]")
        unknown = [kind for kind in self.tta if kind not in TTA_KINDS]
        if unknown:
            raise ValueError(f"unknown test-time augmentation {unknown}; choose from {list(TTA_KINDS)}")

    @classmethod
    def from_params(cls, settings: EvaluateParams) -> InferenceSettings:
        return cls(settings.inference, settings.window, settings.stride, tuple(settings.tta))

    @property
    def window_stride(self) -> tuple[int, int]:
        if self.stride is not None:
            return self.stride
        return (max(1, self.window[0] // 2), max(1, self.window[1] // 2))

    def describe(self) -> str:
        """E.g. ``whole`` or ``slide 512x512 stride 256x256 + hflip``."""
        text = self.mode
        if self.mode == "slide":
            text += f" {self.window[0]}x{self.window[1]} stride {'x'.join(map(str, self.window_stride))}"
        return " + ".join([text, *self.tta])


WHOLE = InferenceSettings()


def padded_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``model(images)``; images whose sides are not multiples of the model's ``output_stride`` are padded
    with zeros at the bottom and right, and the logits cropped back to the image."""
    stride = getattr(model, "output_stride", 1)
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % stride, -width % stride
    if pad_h == 0 and pad_w == 0:
        return model(images)
    return model(F.pad(images, (0, pad_w, 0, pad_h)))[..., :height, :width]


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Offsets of windows ``stride`` apart covering ``size`` pixels; the last one ends at the edge."""
    if size <= window:
        return [0]
    return [*range(0, size - window, stride), size - window]


def slide_logits(
    model: nn.Module, images: torch.Tensor, window: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """Logits averaged over overlapping windows (float32); memory is bounded by the window, not the image."""
    height, width = images.shape[-2:]
    win_h, win_w = min(window[0], height), min(window[1], width)
    total: torch.Tensor | None = None
    counts = torch.zeros((1, 1, height, width), device=images.device)
    for top in window_starts(height, win_h, stride[0]):
        for left in window_starts(width, win_w, stride[1]):
            tile = padded_logits(model, images[..., top : top + win_h, left : left + win_w]).float()
            if total is None:
                total = tile.new_zeros((images.shape[0], tile.shape[1], height, width))
            total[..., top : top + win_h, left : left + win_w] += tile
            counts[..., top : top + win_h, left : left + win_w] += 1
    return total / counts


def _logits(model: nn.Module, images: torch.Tensor, settings: InferenceSettings) -> torch.Tensor:
    if settings.mode == "slide":
        return slide_logits(model, images, settings.window, settings.window_stride)
    return padded_logits(model, images)


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, settings: InferenceSettings = WHOLE
) -> torch.Tensor:
    """Logits ``N×C×H×W`` of ``images`` (``N×3×H×W`` in [0, 1], any size) under ``settings``; with ``hflip``
    the mirrored images' logits are mirrored back and averaged in. The caller puts the model in eval mode."""
    logits = _logits(model, images, settings)
    if "hflip" in settings.tta:
        logits = (logits + _logits(model, images.flip(-1), settings).flip(-1)) / 2
    return logits
