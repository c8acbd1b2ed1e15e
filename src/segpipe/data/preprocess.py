"""Fitting image/mask pairs to the training size (stretch, pad or centre-crop), or bounding their longest
side."""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

ResizePolicy = Literal["stretch", "pad", "crop"]


def _resize(image: np.ndarray, mask: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear for the image, nearest for the mask (so it gets no new values); no-op at the same size."""
    if image.shape[:2] == (height, width):
        return image, mask
    resized_image = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    resized_mask = Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST)
    return np.array(resized_image), np.array(resized_mask)


def fit_to_size(
    image: np.ndarray, mask: np.ndarray, size: tuple[int, int], policy: ResizePolicy, ignore_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bring an HxWx3 uint8 image and its HxW uint8 mask to ``size`` (height, width).

    "stretch" resizes to ``size``; "pad" keeps the aspect ratio, fits the whole image inside and pads
    symmetrically (image with 0, mask with ``ignore_index``; an odd extra pixel goes bottom/right);
    "crop" keeps the aspect ratio, covers ``size`` and crops the centre. Pairs already at ``size``
    are returned unchanged.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != mask.shape:
        raise ValueError(
            f"image shape {image.shape} and mask shape {mask.shape} do not match: expected HxWx3 and HxW"
        )
    height, width = image.shape[:2]
    target_height, target_width = size
    if (height, width) == (target_height, target_width):
        return image, mask
    if policy == "stretch":
        return _resize(image, mask, target_height, target_width)
    if policy == "pad":
        scale = min(target_height / height, target_width / width)
        new_height = min(target_height, max(1, round(height * scale)))
        new_width = min(target_width, max(1, round(width * scale)))
        image, mask = _resize(image, mask, new_height, new_width)
        top, left = (target_height - new_height) // 2, (target_width - new_width) // 2
        padding = ((top, target_height - new_height - top), (left, target_width - new_width - left))
        return np.pad(image, (*padding, (0, 0))), np.pad(mask, padding, constant_values=ignore_index)
    if policy == "crop":
        scale = max(target_height / height, target_width / width)
        new_height = max(target_height, round(height * scale))
        new_width = max(target_width, round(width * scale))
        image, mask = _resize(image, mask, new_height, new_width)
        top, left = (new_height - target_height) // 2, (new_width - target_width) // 2
        window = np.s_[top : top + target_height, left : left + target_width]
        return image[window].copy(), mask[window].copy()
    raise ValueError(f"unknown resize policy {policy!r}: use stretch, pad or crop")


def bounded_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(height, width) scaled down so the longest side is ``max_side``; unchanged when it already fits."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def limit_side(image: np.ndarray, mask: np.ndarray, max_side: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Downscale a pair whose longest side exceeds ``max_side`` (image bilinear with antialiasing, mask
    nearest), keeping the aspect ratio; smaller pairs are returned unchanged."""
    return _resize(image, mask, *bounded_size(*image.shape[:2], max_side))
