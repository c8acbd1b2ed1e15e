"""ONNX export of a segpipe model: dynamic batch, height and width, opset :data:`OPSET`.

Most architectures go through torch's tracing exporter (fast, any size). ``max_unpool`` upsampling (SegNet's)
cannot be traced with symbolic sizes, so a model that has it goes through the ``torch.export``-based exporter,
with height and width declared as multiples of the model's output stride."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from torch import nn

from segpipe import io

OPSET = 18
"""ONNX opset 18: supported by onnxruntime 1.14 and later, and by both of torch's exporters."""
MAX_SIDE = 8192
"""Largest image side (px) the exported graph declares (``segpipe predict``'s limit)."""
INPUT, OUTPUT = "images", "logits"


class ExportError(ValueError):
    """An architecture that torch cannot export to ONNX."""


def export_onnx(model: nn.Module, architecture: str, out: Path, channels: int = 3) -> Path:
    """Write ``model`` to ``out`` as ONNX: float32 ``images (N, channels, H, W)`` in [0, 1] -> ``logits (N,
    classes, H, W)``, H and W multiples of the output stride. :class:`ExportError` names the architecture and
    the reason where torch cannot export it."""
    model = model.eval().cpu()
    stride = int(getattr(model, "output_stride", 1))
    side = stride * math.ceil(64 / stride)  # a small example; the graph takes any multiple of the stride
    example = torch.rand(1, channels, side, side)
    unpools = any(isinstance(module, nn.MaxUnpool2d) for module in model.modules())
    with io.atomic_path(Path(out)) as tmp, warnings.catch_warnings():
        # the tracer's notes on the (constant) input-size check and the exporters' deprecation notices
        warnings.simplefilter("ignore")
        try:
            if unpools:
                _export_program(model, example, stride, tmp)
            else:
                _export_traced(model, example, tmp)
        except Exception as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            raise ExportError(
                f"{architecture} cannot be exported to ONNX by torch {torch.__version__} "
                f"({type(error).__name__}: {reason}); serve it with the MLflow model instead"
            ) from None
    return Path(out)


def _export_traced(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    dynamic = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_axes={INPUT: dynamic, OUTPUT: dynamic},
    )


def _export_program(model: nn.Module, example: torch.Tensor, stride: int, path: Path) -> None:
    steps = MAX_SIDE // stride
    height, width = (torch.export.Dim(f"{axis}_steps", min=1, max=steps) for axis in ("height", "width"))
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=1024), 2: stride * height, 3: stride * width}}
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        opset_version=OPSET,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_shapes=shapes,
        verbose=False,
    )
    program.save(str(path))
