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
from segpipe.data.decode import IMAGE_SUFFIXES, image_shape, read_image
from segpipe.data.errors import DatasetError

MAX_SIDE = 8192
"""Largest image side (px) predict accepts."""
MAX_PIXELS = 64_000_000
"""Largest image area predict accepts (64 megapixels)."""


def load_model(uri: str, device: torch.device) -> nn.Module:
    """A model from MLflow (``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/...``) or a
    segpipe checkpoint file (``models/<architecture>/model.pt``, read without unpickling)."""
    if Path(uri).is_file():
        from segpipe.training.checkpoint import load_checkpoint

        return load_checkpoint(Path(uri), device)[0]
    if ":/" not in uri and not Path(uri).exists():
        raise DatasetError(
            "the model file does not exist",
            "pass --model models:/<name>@<alias>, runs:/<run id>/<path> or a model.pt written by the train stage", uri,
        )
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
    """Write ``<stem>_mask.png`` (class ids) and ``<stem>_overlay.png`` per image into ``out_dir``.

    The image paths, the output folder, ``size`` and every image (:func:`check_inputs`) are checked first: a bad
    one raises DatasetError naming the file and the fix, before any file is written.
    """
    images = [Path(path) for path in images]
    out_dir = Path(out_dir)
    targets = _output_targets(images, out_dir)
    model = load_model(model_uri, device)
    check_inputs(images, int(getattr(model, "output_stride", 32)), size)
    written = []
    for path, (mask_target, overlay_target) in zip(images, targets):
        image = read_image(path)
        mask = predict_mask(model, image, device, size)
        palette = class_palette(max(int(mask.max()) + 1, _num_outputs(model)))
        for target, array in ((mask_target, mask), (overlay_target, overlay(image, mask, palette))):
            io.write_with(target, lambda tmp, array=array: Image.fromarray(array).save(tmp, format="PNG"))
            written.append(target)
    return written


def check_inputs(images: list[Path], stride: int, size: tuple[int, int] | None) -> None:
    """DatasetError unless ``size`` fits the model and every image decodes and is at least ``stride`` and at most
    ``MAX_SIDE`` px a side and ``MAX_PIXELS`` in all (read from the header first, so a huge image is not decoded)."""
    if size is not None:
        _check_size(size, stride)
    for path in images:
        height, width = image_shape(path)
        if max(height, width) > MAX_SIDE or height * width > MAX_PIXELS:
            raise DatasetError(
                f"the image is {width}x{height} px, more than predict handles "
                f"({MAX_SIDE} px a side, {MAX_PIXELS // 1_000_000} megapixels)",
                "downscale the image or cut it into tiles", path,
            )
        if min(height, width) < stride:
            raise DatasetError(
                f"the image is {width}x{height} px, smaller than the model's output stride ({stride} px)",
                f"use an image at least {stride}x{stride} px", path,
            )
        read_image(path)  # decodes every pixel: a truncated file fails here, before any output is written


def _check_size(size: tuple[int, int], stride: int) -> None:
    shown = " ".join(str(side) for side in size)
    nearest = " ".join(str(min(MAX_SIDE, max(stride, round(side / stride) * stride))) for side in size)
    if any(side <= 0 or side % stride for side in size):
        raise DatasetError(
            f"--size {shown} is not a multiple of the model's output stride ({stride} px)", f"use --size {nearest}"
        )
    if max(size) > MAX_SIDE:
        raise DatasetError(f"--size {shown} is more than {MAX_SIDE} px a side", f"use --size {nearest}, or the training size")


def _output_targets(images: list[Path], out_dir: Path) -> list[tuple[Path, Path]]:
    """The (mask, overlay) files per image, named from the image's file name only, so they stay inside
    ``out_dir``; DatasetError for a bad input path, an unusable ``out_dir`` or two outputs on one file."""
    if not images:
        raise DatasetError("no images given", "pass one or more image files")
    _check_out_dir(out_dir)
    for path in images:
        _check_input_path(path)
    inputs = {path.resolve(): path for path in images}
    first_with_stem: dict[str, Path] = {}
    targets = []
    for path in images:
        earlier = first_with_stem.get(path.stem.casefold())
        if earlier is not None:
            raise DatasetError(
                f"both {earlier} and {path} would be written as {path.stem}_mask.png (outputs are named by file name)",
                "list each image once and give images distinct names, or predict them into separate --out folders", path,
            )
        first_with_stem[path.stem.casefold()] = path
        pair = (out_dir / f"{path.stem}_mask.png", out_dir / f"{path.stem}_overlay.png")
        for target in pair:
            if target.resolve() in inputs:
                raise DatasetError(
                    f"its output {target.name} would overwrite the input image {inputs[target.resolve()]}",
                    "choose another --out folder", path,
                )
        targets.append(pair)
    return targets


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetError("the output folder is an existing file", "pass --out a folder (new or existing), not a file", out_dir)
    blocking = next((parent for parent in out_dir.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise DatasetError(f"the output folder cannot be created: {blocking} is a file", "pass --out a folder path", out_dir)


def _check_input_path(path: Path) -> None:
    if path.is_dir():
        raise DatasetError("the path is a directory, not an image file", f"pass the images inside it, e.g. {path}/*.png", path)
    if not path.exists():
        raise DatasetError("the image file does not exist", "check the path (relative paths start at the current folder)", path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DatasetError(
            f"unsupported file type {path.suffix or '(no extension)'}",
            f"convert it to one of {', '.join(sorted(IMAGE_SUFFIXES))}", path,
        )


def _num_outputs(model: nn.Module) -> int:
    heads = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    return heads[-1].out_channels if heads else 1
