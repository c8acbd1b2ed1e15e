"""Image-reconstruction quality: PSNR and SSIM per image, for images in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(outputs: torch.Tensor, targets: torch.Tensor, max_db: float = 100.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image of [N, C, H, W] (data range 1), capped at ``max_db``;
    computed in float32, also under bf16 autocast."""
    outputs, targets = outputs.float(), targets.float()
    mse = (outputs - targets).pow(2).flatten(1).mean(1)
    return (-10.0 * torch.log10(mse.clamp(min=10 ** (-max_db / 10)))).clamp(max=max_db)


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(outputs: torch.Tensor, targets: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al., 2004) of each image of [N, C, H, W], data range 1.

    Gaussian 11×11 window (σ = 1.5), K1 = 0.01, K2 = 0.03, computed per channel over the valid
    region and averaged; images smaller than the window use a window of their smaller side. Computed in
    float32 with autocast off: in bfloat16 the variance differences cancel and the index overflows.
    """
    with torch.autocast(outputs.device.type, enabled=False):
        return _ssim(outputs.float(), targets.float(), window, sigma)


def _ssim(outputs: torch.Tensor, targets: torch.Tensor, window: int, sigma: float) -> torch.Tensor:
    channels = outputs.shape[1]
    size = min(window, *outputs.shape[-2:])
    kernel = _gaussian_window(size, sigma, channels, outputs)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(outputs), blur(targets)
    var_x = blur(outputs * outputs) - mu_x**2
    var_y = blur(targets * targets) - mu_y**2
    cov = blur(outputs * targets) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(1)
