"""Predict class-id masks (and colour overlays) for image files with a registered or local model."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segpipe import io
from segpipe.data.decode import read_image


def load_model(uri: str, device: torch.device) -> nn.Module:
    """A model from MLflow (``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/...``) or a
    segpipe checkpoint file (``models/<architecture>/model.pt``, read without unpickling)."""
    if Path(uri).is_file():
        from segpipe.training.checkpoint import load_checkpoint

        return load_checkpoint(Path(uri), device)[0]
    import mlflow

    return mlflow.pytorch.load_model(uri, map_location=device).to(device).eval()


def class_palette(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` uint8 colours, evenly spread hues (class 0 dark grey, as background)."""
    colours = [(64, 64, 64)] + [
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb(k / max(num_classes - 1, 1), 0.85, 0.95))
        for k in range(num_classes - 1)
    ]
    return np.array(colours[:num_classes], dtype=np.uint8)


@torch.inference_mode()
def predict_mask(model: nn.Module, image: np.ndarray, device: torch.device, size: tuple[int, int] | None = None) -> np.ndarray:
    """Class ids ``[H, W]`` for an ``[H, W, 3]`` uint8 image of any size.

    With ``size`` the image is resized to it (e.g. the training size) and the mask resized back
    (nearest); otherwise it is zero-padded to a multiple of the model's output stride and cropped back.
    """
    height, width = image.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float().div_(255.0)
    if size is not None:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    else:
        stride = int(getattr(model, "output_stride", 32))
        x = F.pad(x, (0, -width % stride, 0, -height % stride))
    model.eval()
    classes = model(x).argmax(1, keepdim=True)
    if size is not None:
        classes = F.interpolate(classes.float(), size=(height, width), mode="nearest").long()
    return classes[0, 0, :height, :width].to(torch.uint8).cpu().numpy()


def overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image blended with its class colours."""
    colours = palette[np.minimum(mask, len(palette) - 1)]
    return (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).round().astype(np.uint8)


def predict_files(
    images: list[Path], model_uri: str, out_dir: Path, device: torch.device, size: tuple[int, int] | None = None
) -> list[Path]:
    """Write ``<stem>_mask.png`` (class ids) and ``<stem>_overlay.png`` per image into ``out_dir``."""
    model = load_model(model_uri, device)
    written = []
    for path in images:
        image = read_image(Path(path))
        mask = predict_mask(model, image, device, size)
        palette = class_palette(max(int(mask.max()) + 1, _num_outputs(model)))
        targets = (out_dir / f"{Path(path).stem}_mask.png", out_dir / f"{Path(path).stem}_overlay.png")
        for target, array in zip(targets, (mask, overlay(image, mask, palette))):
            io.write_with(target, lambda tmp, array=array: Image.fromarray(array).save(tmp, format="PNG"))
        written += targets
    return written


def _num_outputs(model: nn.Module) -> int:
    heads = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    return heads[-1].out_channels if heads else 1
