"""Shared model interface (shape check, predict) and building blocks."""

import torch
from torch import nn


class SegmentationNetwork(nn.Module):
    """Maps images [N, C, H, W] to logits [N, num_classes, H, W].

    H and W must be divisible by ``output_stride``; ``forward`` calls ``check_input_shape``.
    """

    def __init__(self, output_stride: int):
        super().__init__()
        self.output_stride = output_stride

    def check_input_shape(self, x: torch.Tensor) -> None:
        """Raise ValueError naming each spatial size not divisible by ``output_stride``."""
        if x.dim() != 4:
            raise ValueError(f"Expected input of shape [N, C, H, W], got {tuple(x.shape)}.")
        stride = self.output_stride
        problems = [
            f"{axis}={size} (nearest valid: {_nearest_multiples(size, stride)})"
            for axis, size in zip(("height", "width"), x.shape[-2:], strict=True)
            if size % stride
        ]
        if problems:
            raise ValueError(
                f"Input size must be divisible by output_stride={stride}; "
                f"got {', '.join(problems)}. Pad or resize the images."
            )

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Switch to eval mode and return logits without tracking gradients."""
        self.eval()
        return self(x)


class SegmentationModel(SegmentationNetwork):
    """Encoder -> decoder -> head, the layout of segpipe's own architectures."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, head: nn.Module, output_stride: int):
        super().__init__(output_stride)
        self.encoder = encoder
        self.decoder = decoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        features = self.encoder(x)
        return self.head(self.decoder(features))


def count_params_m(model: nn.Module) -> float:
    """Parameter count in millions."""
    return sum(p.numel() for p in model.parameters()) / 1e6


def conv_block(
    in_channels: int, out_channels: int, num_convs: int = 2, batch_norm: bool = False
) -> nn.Sequential:
    """``num_convs`` × (3×3 same-padded conv [+ BatchNorm] + ReLU)."""
    layers: list[nn.Module] = []
    for index in range(num_convs):
        conv_in = in_channels if index == 0 else out_channels
        layers.append(nn.Conv2d(conv_in, out_channels, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _nearest_multiples(size: int, stride: int) -> str:
    below, above = (size // stride) * stride, (size // stride + 1) * stride
    return f"{below} or {above}" if below else f"{above}"
