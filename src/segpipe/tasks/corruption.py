"""Image corruptions for ``task: denoise``, applied on the images' device from a seeded generator."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

CorruptionKind = Literal["gaussian", "salt_pepper", "masked_patches"]


def corrupt(
    images: torch.Tensor,
    kind: CorruptionKind,
    level: float,
    generator: torch.Generator,
    patch_size: int = 8,
) -> torch.Tensor:
    """A corrupted copy of ``images`` ([N, C, H, W] in [0, 1]); the result stays in [0, 1].

    - ``gaussian``: adds noise of standard deviation ``level``, then clips.
    - ``salt_pepper``: a fraction ``level`` of the pixel positions becomes black or white (all channels).
    - ``masked_patches``: each ``patch_size``×``patch_size`` cell of a grid is blacked out with
      probability ``level``.
    """
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"corruption level must lie in [0, 1], got {level}")
    n, _, h, w = images.shape
    options = {"generator": generator, "device": images.device}
    if kind == "gaussian":
        noise = torch.randn(images.shape, dtype=images.dtype, **options)
        return (images + level * noise).clamp_(0.0, 1.0)
    if kind == "salt_pepper":
        draw = torch.rand((n, 1, h, w), **options)
        return images.masked_fill(draw < level / 2, 1.0).masked_fill_(draw >= 1 - level / 2, 0.0)
    if kind == "masked_patches":
        cells = (n, 1, -(-h // patch_size), -(-w // patch_size))
        keep = (torch.rand(cells, **options) >= level).to(images.dtype)
        keep = F.interpolate(keep, scale_factor=patch_size, mode="nearest")[..., :h, :w]
        return images * keep
    raise ValueError(f"unknown corruption {kind!r}; choose gaussian, salt_pepper or masked_patches")
