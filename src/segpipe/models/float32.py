"""Float32 at a network's two edges under autocast: its first convolution reads the image unrounded, and its
logits layer computes and returns float32.

bfloat16 keeps 8 significant bits. Rounding the normalised image before the first convolution, and the logits
after the last layer, flips the predicted class wherever two classes score within a few hundredths of each
other. Both layers are thin (few input channels, few output channels), so they cost little in float32; the
first convolution hands the next layer autocast's dtype, so everything between runs as before. Outside
autocast nothing changes.
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
    """Mixin: the layer's own ``forward`` in float32, returning float32."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return in_float32(super().forward, x, *args, **kwargs)


class Float32Input(Float32Forward):
    """Mixin: the layer's own ``forward`` in float32, returning autocast's dtype."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        device_type = x.device.type
        output = super().forward(x, *args, **kwargs)
        if torch.is_autocast_enabled(device_type):
            return output.to(torch.get_autocast_dtype(device_type))
        return output


@functools.cache
def _variant(mixin: type[nn.Module], layer_class: type[nn.Module]) -> type[nn.Module]:
    name = f"{mixin.__name__.removesuffix('Forward')}{layer_class.__name__}"
    return type(name, (mixin, layer_class), {"__module__": __name__})


def _mix_in(layer: nn.Module, mixin: type[nn.Module]) -> None:
    # only the class changes: parameters, buffers and state-dict keys stay, so weights load and save as before
    if not isinstance(layer, Float32Forward):
        layer.__class__ = _variant(mixin, type(layer))


def first_convolution(module: nn.Module) -> nn.Conv2d:
    """The first ``nn.Conv2d`` among ``module``'s layers, in the order they were built."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            return layer
    raise ValueError(f"{type(module).__name__} has no nn.Conv2d")


def keep_edges_float32(encoder: nn.Module, head: nn.Module) -> None:
    """Under autocast, the encoder's first convolution reads its input in float32 and ``head`` (the layer
    giving the logits) computes and returns float32; in place."""
    _mix_in(first_convolution(encoder), Float32Input)
    _mix_in(head, Float32Forward)
