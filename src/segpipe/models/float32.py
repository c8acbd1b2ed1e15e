"""Layers that compute in float32 under autocast: a network's first convolution and its logits layer.

bfloat16 keeps 8 significant bits. Rounding the normalised image into the first convolution, and the logits
out of the last layer, flips the predicted class wherever two classes score within a few hundredths of each
other. These two layers are thin (few input channels, few output channels), so computing them in float32,
as low-precision inference commonly keeps a network's first and last layers, costs little and removes most
of those flips. Outside autocast nothing changes.
"""

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def in_float32(forward: Callable[..., Any], x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """``forward(x, ...)`` in float32 when autocast is on for ``x``'s device; unchanged otherwise."""
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return forward(x, *args, **kwargs)
    with torch.autocast(device_type, enabled=False):
        return forward(x.float(), *args, **kwargs)


class Float32Forward(nn.Module):
    """Mixin: the layer's own ``forward``, run through :func:`in_float32`."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return in_float32(super().forward, x, *args, **kwargs)


@functools.cache
def _float32_variant(layer_class: type[nn.Module]) -> type[nn.Module]:
    return type(f"Float32{layer_class.__name__}", (Float32Forward, layer_class), {"__module__": __name__})


def keep_float32(layer: nn.Module) -> None:
    """Make ``layer`` compute in float32 under autocast, in place; its parameters, buffers and state-dict
    keys stay as they are, so weights load and save unchanged."""
    if not isinstance(layer, Float32Forward):
        layer.__class__ = _float32_variant(type(layer))


def first_convolution(module: nn.Module) -> nn.Conv2d:
    """The first ``nn.Conv2d`` among ``module``'s layers, in the order they were built."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            return layer
    raise ValueError(f"{type(module).__name__} has no nn.Conv2d")


def keep_edges_float32(encoder: nn.Module, head: nn.Module) -> None:
    """Keep the encoder's first convolution and the whole ``head`` (the layer giving logits) in float32."""
    keep_float32(first_convolution(encoder))
    keep_float32(head)
