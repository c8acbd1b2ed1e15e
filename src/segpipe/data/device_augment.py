"""Zoom and colour jitter as batched tensor operations on the training device (``augment.on_device``).

The albumentations path (:mod:`segpipe.data.augment`) works per sample on the CPU; with a fast GPU and a few
CPU cores that starves the GPU. Here one batch is transformed at once, where the batch already is. Random
draws come from a generator seeded by (seed, epoch, batch), so a resumed epoch sees the same augmentations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from segpipe.config import AugmentParams

_LUMA = (0.299, 0.587, 0.114)


class DeviceAugmenter:
    """Random zoom (image bilinear, mask nearest, outside pixels black / ``ignore_index``) then colour
    jitter."""

    def __init__(self, settings: AugmentParams, ignore_index: int, seed: int, device: torch.device) -> None:
        self.scale = settings.scale
        self.jitter = settings.color_jitter
        self.ignore_index = ignore_index
        self.seed = seed
        self.device = device

    def __call__(
        self, images: torch.Tensor, masks: torch.Tensor, epoch: int, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` float ``B×3×H×W`` in [0, 1] and ``masks`` int64 ``B×H×W``, both on the device."""
        generator = torch.Generator(device=self.device).manual_seed(self.seed + epoch * 1_000_003 + batch)
        if self.scale is not None:
            images, masks = self._zoom(images, masks, generator)
        if self.jitter is not None:
            images = self._colour(images, generator)
        return images, masks

    def _uniform(self, count: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(count, device=self.device, generator=generator) * (high - low) + low

    def _zoom(
        self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.scale
        zoom = self._uniform(images.shape[0], low, high, generator)
        theta = torch.zeros(images.shape[0], 2, 3, device=self.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom  # zoom > 1 samples a smaller centred window: zoom in
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        shifted = (masks + 1).unsqueeze(1).float()  # 0 marks "outside the image" after zero padding
        sampled = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        sampled = sampled.squeeze(1).long()
        masks = torch.where(sampled == 0, torch.full_like(sampled, self.ignore_index), sampled - 1)
        return images, masks

    def _colour(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        jitter = self.jitter
        count = images.shape[0]
        luma = torch.tensor(_LUMA, device=self.device).view(1, 3, 1, 1)

        def factor(amount: float) -> torch.Tensor:
            return self._uniform(count, 1 - amount, 1 + amount, generator).view(count, 1, 1, 1)

        images = images * factor(jitter.brightness)
        grey = (images * luma).sum(1, keepdim=True)
        images = (images - grey.mean((2, 3), keepdim=True)) * factor(jitter.contrast) + grey.mean(
            (2, 3), keepdim=True
        )
        grey = (images * luma).sum(1, keepdim=True)
        images = (images - grey) * factor(jitter.saturation) + grey
        if jitter.hue > 0:
            images = _rotate_hue(
                images, self._uniform(count, -jitter.hue, jitter.hue, generator) * 2 * math.pi
            )
        return images.clamp_(0, 1)


def _rotate_hue(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each image's chroma by ``angles`` (radians) in YIQ space, keeping its luma."""
    to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=images.device
    )
    from_yiq = torch.linalg.inv(to_yiq)
    cos, sin = torch.cos(angles), torch.sin(angles)
    rotation = torch.zeros(angles.shape[0], 3, 3, device=images.device)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    transform = from_yiq @ rotation @ to_yiq  # B×3×3
    return torch.einsum("bij,bjhw->bihw", transform, images)
