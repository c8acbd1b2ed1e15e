"""Model cost figures measured by torch itself: parameter count and forward FLOPs."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from segpipe.models.base import count_params_m


@torch.no_grad()
def gflops_per_image(model: nn.Module, height: int, width: int, in_channels: int = 3) -> float:
    """Forward GFLOPs for one ``in_channels × height × width`` image (``torch.utils.flop_counter``)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, in_channels, height, width, device=device))
    model.train(was_training)
    return counter.get_total_flops() / 1e9


__all__ = ["count_params_m", "gflops_per_image"]
