"""Training augmentations with albumentations: one pipeline applied identically to image and mask."""

from __future__ import annotations

import os

import numpy as np

from segpipe.config import AugmentParams

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would otherwise query PyPI on import
import albumentations as A
import cv2


class SampleAugmenter:
    """Seeded albumentations pipeline over uint8 HxWx3 images and HxW masks; the size never changes.

    Order: flips, zoom (``A.Affine`` about the centre: zooming in crops, zooming out pads with black
    and, in the mask, ``ignore_index``; masks are always resampled nearest), then colour jitter.
    """

    def __init__(self, settings: AugmentParams, ignore_index: int, seed: int):
        transforms: list[A.BasicTransform] = []
        if settings.hflip:
            transforms.append(A.HorizontalFlip(p=0.5))
        if settings.vflip:
            transforms.append(A.VerticalFlip(p=0.5))
        if settings.scale is not None:
            transforms.append(
                A.Affine(
                    scale=settings.scale,
                    keep_ratio=True,
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST,
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=0,
                    fill_mask=ignore_index,
                    p=1.0,
                )
            )
        if settings.color_jitter is not None:
            jitter = settings.color_jitter
            transforms.append(
                A.ColorJitter(
                    brightness=jitter.brightness,
                    contrast=jitter.contrast,
                    saturation=jitter.saturation,
                    hue=jitter.hue,
                    p=1.0,
                )
            )
        self.seed = seed
        self.pipeline = A.Compose(transforms, seed=seed)

    def set_epoch(self, epoch: int, batch: int = 0) -> None:
        """Reseed so that every epoch's (and batch's) augmentations are reproducible on their own,
        which lets an interrupted epoch resume at any batch with the same augmentations."""
        self.pipeline.set_random_seed(self.seed + epoch * 1_000_003 + batch)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.pipeline(image=np.ascontiguousarray(image), mask=np.ascontiguousarray(mask))
        return out["image"], out["mask"]
