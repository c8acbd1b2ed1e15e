"""Shared model interface (input normalisation, shape check, predict) and building blocks."""

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segpipe.models.float32 import keep_edges_float32


class InputNormalisation(nn.Module):
    """``(x - mean) / std`` per channel, on images scaled to [0, 1]; identity (mean 0, std 1) by default.

    ``mean`` and ``std`` are buffers, saved with the weights. A state dict from before they existed has
    neither: loading it keeps the identity, which is what such a model was trained with."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def set(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Set the statistics; ValueError unless there is one mean and one positive std per channel."""
        channels = self.mean.numel()
        if len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"normalisation needs {channels} means and {channels} stds (one per input channel), "
                f"got {len(mean)} and {len(std)}"
            )
        if not all(0 < value < float("inf") for value in std):
            raise ValueError(f"normalisation std must be positive and finite, got {list(std)}")
        with torch.no_grad():
            self.mean.copy_(torch.tensor(mean, dtype=self.mean.dtype))
            self.std.copy_(torch.tensor(std, dtype=self.std.dtype))

    def record(self) -> dict[str, list[float]]:
        """The statistics as JSON-ready lists."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        if f"{prefix}mean" not in state_dict and f"{prefix}std" not in state_dict:
            self.set([0.0] * self.mean.numel(), [1.0] * self.std.numel())
            return
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def is_normalisation_key(key: str) -> bool:
    """Whether state-dict ``key`` is an :class:`InputNormalisation` buffer (absent from older weights)."""
    return key.split(".")[-2:] in (["normalisation", "mean"], ["normalisation", "std"])


class SegmentationNetwork(nn.Module):
    """Maps images [N, C, H, W] in [0, 1] to logits [N, num_classes, H, W].

    ``normalisation`` standardises the input first, so every user of the model (training, evaluation,
    predict, the registry, ONNX export) applies the same preprocessing. H and W must be divisible by
    ``output_stride``; ``forward`` calls ``check_input_shape``.
    """

    def __init__(self, output_stride: int, in_channels: int):
        super().__init__()
        self.output_stride = output_stride
        self.normalisation = InputNormalisation(in_channels)

    def set_normalisation(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Standardise inputs with these per-channel statistics (of pixel values scaled to [0, 1])."""
        self.normalisation.set(mean, std)

    def encoder_module(self) -> nn.Module:
        """The encoder: what ``encoder_weights_file`` and ``init: pretrain`` initialise."""
        raise NotImplementedError(f"{type(self).__name__} does not name its encoder")

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
    """Encoder -> decoder -> head, the layout of segpipe's own architectures. Under autocast the encoder's
    first convolution reads its input in float32 and the head returns float32 logits
    (:mod:`segpipe.models.float32`)."""

    def __init__(
        self, encoder: nn.Module, decoder: nn.Module, head: nn.Module, output_stride: int, in_channels: int
    ):
        super().__init__(output_stride, in_channels)
        keep_edges_float32(encoder, head)
        self.encoder = encoder
        self.decoder = decoder
        self.head = head

    def encoder_module(self) -> nn.Module:
        return self.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        features = self.encoder(self.normalisation(x))
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
