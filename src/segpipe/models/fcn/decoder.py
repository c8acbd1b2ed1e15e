"""FCN skip fusion and bilinear-initialised upsampling."""

import torch
from torch import nn

from segpipe.models.upsampling import StridedConvTranspose2d


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weights [channels, channels, k, k] that make a transposed conv upsample each channel
    bilinearly (the classic FCN initialisation)."""
    factor = (kernel_size + 1) // 2
    center = factor - 0.5 if kernel_size % 2 == 0 else factor - 1
    taps = 1 - (torch.arange(kernel_size, dtype=torch.float32) - center).abs() / factor
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = torch.outer(taps, taps)
    return weight


class BilinearUpsample(StridedConvTranspose2d):
    """Learnable ×``factor`` upsampling, initialised to bilinear interpolation.

    Kernel 2·factor, stride factor, padding factor/2: the output is exactly ``factor`` times the
    input and matches ``F.interpolate(mode="bilinear", align_corners=False)`` away from the border.
    """

    def __init__(self, channels: int, factor: int):
        if factor % 2:
            raise ValueError(f"upsampling factor must be even, got {factor}")
        super().__init__(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(self.in_channels, self.kernel_size[0]))


def zero_scorer(in_channels: int, num_classes: int) -> nn.Conv2d:
    """1×1 score layer starting at zero, so a new skip does not disturb the coarser prediction."""
    scorer = nn.Conv2d(in_channels, num_classes, kernel_size=1)
    nn.init.zeros_(scorer.weight)
    nn.init.zeros_(scorer.bias)
    return scorer


class FCNDecoder(nn.Module):
    """Scores fc7, then per skip (pool4 for 16s; pool4 and pool3 for 8s) upsamples the scores 2×
    and adds the skip's zero-initialised score. Returns class scores at stride ``variant``."""

    def __init__(self, encoder_channels: tuple[int, int, int], num_classes: int, variant: int):
        super().__init__()
        pool3_channels, pool4_channels, fc_channels = encoder_channels
        skip_channels = {32: [], 16: [pool4_channels], 8: [pool4_channels, pool3_channels]}[variant]
        self.score = nn.Conv2d(fc_channels, num_classes, kernel_size=1)
        self.skip_scores = nn.ModuleList(zero_scorer(c, num_classes) for c in skip_channels)
        self.skip_upsamples = nn.ModuleList(BilinearUpsample(num_classes, 2) for _ in skip_channels)

    def forward(self, features: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        *skips, fc7 = features
        scores = self.score(fc7)
        # 32s fuses no skip, 16s only pool4: the extra skips are left unused
        fusions = zip(reversed(skips), self.skip_scores, self.skip_upsamples, strict=False)
        for skip, skip_score, upsample in fusions:
            scores = upsample(scores) + skip_score(skip)
        return scores
