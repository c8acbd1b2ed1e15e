"""VGG-16 encoder with fc6/fc7 as convolutions, as used by FCN."""

import torch
from torch import nn

from segpipe.models.base import conv_block

VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # (channels, convs) per block
VGG16_FC_CHANNELS = 4096
MIN_CHANNELS = 8


def scaled(channels: int, width: float) -> int:
    return max(MIN_CHANNELS, round(channels * width))


class VGG16Encoder(nn.Module):
    """Five conv blocks, each followed by a 2×2 max-pool, then fc6 (7×7 conv) and fc7 (1×1 conv)
    with ReLU + dropout. Returns (pool3, pool4, fc7) at strides 8, 16 and 32; ``out_channels``
    lists their widths. ``batch_norm`` gives the VGG-16-BN variant (trains reliably from scratch)."""

    def __init__(
        self, in_channels: int, width: float, fc_channels: int | None, dropout: float, batch_norm: bool
    ):
        super().__init__()
        if fc_channels is None:
            fc_channels = scaled(VGG16_FC_CHANNELS, width)
        widths = [scaled(channels, width) for channels, _ in VGG16_BLOCKS]
        block_inputs = [in_channels, *widths[:-1]]
        self.blocks = nn.ModuleList(
            nn.Sequential(conv_block(block_in, block_out, num_convs, batch_norm), nn.MaxPool2d(2))
            for block_in, block_out, (_, num_convs) in zip(block_inputs, widths, VGG16_BLOCKS, strict=True)
        )
        self.fc = nn.Sequential(
            nn.Conv2d(widths[-1], fc_channels, kernel_size=7, padding=3),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(fc_channels, fc_channels, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.out_channels = (widths[2], widths[3], fc_channels)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # He init, as torchvision's VGG: trained from scratch
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled = []
        for block in self.blocks:
            x = block(x)
            pooled.append(x)
        return pooled[2], pooled[3], self.fc(x)
