"""Predict class-id masks (and colour overlays) for image files with a registered or local model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segpipe import io
from segpipe.data.decode import IMAGE_FORMATS, IMAGE_SUFFIXES, MAX_SIDE, check_image_size, read_image
from segpipe.data.errors import DatasetError
from segpipe.figures import class_palette
from segpipe.inference import WHOLE, InferenceSettings, predict_logits
from segpipe.training.checkpoint import load_checkpoint, meta_path
from segpipe.training.device import ComputeMode


@contextmanager
def model_checkpoint(uri: str) -> Iterator[Path]:
    """The checkpoint of ``uri``: a segpipe checkpoint (``models/<architecture>/model.safetensors`` with its
    ``model.json``), or an MLflow model (``models:/<name>@<alias>``, ``models:/<name>/<version>``,
    ``runs:/...`` or a local MLflow model folder) downloaded and checked to hold nothing but safetensors and
    JSON (:func:`segpipe.serving.logged.check_model_folder`). Nothing is loaded or unpickled."""
    if Path(uri).is_file():
        yield Path(uri)
        return
    if ":/" not in uri and not Path(uri).exists():
        raise DatasetError(
            "the model file does not exist",
            "pass --model models:/<name>@<alias>, runs:/<run id>/<path> or a "
            "models/<architecture>/model.safetensors written by the train stage",
            uri,
        )
    from segpipe.serving.logged import model_checkpoint as logged_checkpoint

    with logged_checkpoint(uri) as checkpoint:
        yield checkpoint


def recorded_stride(checkpoint: Path) -> int:
    """The output stride in ``checkpoint``'s JSON, read before the model is built (1 where it is unreadable:
    loading the checkpoint then names the problem)."""
    try:
        return int(json.loads(meta_path(checkpoint).read_text(encoding="utf-8"))["output_stride"])
    except (OSError, ValueError, KeyError, TypeError):
        return 1


@torch.inference_mode()
def predict_mask(
    model: nn.Module,
    image: np.ndarray,
    device: torch.device,
    size: tuple[int, int] | None = None,
    mode: ComputeMode | None = None,
    inference: InferenceSettings = WHOLE,
) -> np.ndarray:
    """Class ids ``[H, W]`` for an ``[H, W, 3]`` uint8 image of any size.

    With ``size`` the image is resized to it (e.g. the training size) and the mask resized back
    (nearest); otherwise it is predicted at its own size under ``inference`` (whole image, zero-padded to a
    multiple of the model's output stride and cropped back, or sliding windows; optional flips).
    ``mode`` (default fp32, NCHW) sets autocast and the input's memory format; the model should already be
    in its memory format (:meth:`ComputeMode.prepare`).
    """
    height, width = image.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float().div_(255.0)
    if size is not None:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    mode = mode or ComputeMode(device)
    model.eval()
    with mode.autocast():
        classes = predict_logits(model, mode.inputs(x), inference).argmax(1, keepdim=True)
    if size is not None:
        classes = F.interpolate(classes.float(), size=(height, width), mode="nearest").long()
    return classes[0, 0, :height, :width].to(torch.uint8).cpu().numpy()


def overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image blended with its class colours."""
    colours = palette[np.minimum(mask, len(palette) - 1)]
    return (
        (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).round().astype(np.uint8)
    )


def predict_files(
    images: list[Path],
    model_uri: str,
    out_dir: Path,
    device: torch.device,
    size: tuple[int, int] | None = None,
    precision: str = "auto",
    inference: InferenceSettings = WHOLE,
) -> list[Path]:
    """Write ``<stem>_mask.png`` (class ids) and ``<stem>_overlay.png`` per image into ``out_dir``.

    ``precision`` as ``train.precision``: ``auto`` runs bf16 autocast and channels_last on CUDA and on a CPU
    with native bf16, fp32 elsewhere. ``inference`` as ``evaluate``'s settings (whole image or sliding
    windows, flips).

    The image paths, the output folder, ``size`` and every image (:func:`check_inputs`) are checked first: a
    bad one raises DatasetError naming the file and the fix, before any file is written.
    """
    images = [Path(path) for path in images]
    out_dir = Path(out_dir)
    targets = _output_targets(images, out_dir)
    with model_checkpoint(model_uri) as checkpoint:
        check_inputs(images, recorded_stride(checkpoint), size)  # every input, before any model is built
        model = load_checkpoint(checkpoint, device)[0]
    mode = ComputeMode.resolve(device, precision)
    mode.prepare(model)
    written = []
    for path, (mask_target, overlay_target) in zip(images, targets, strict=True):
        image = read_image(path)
        mask = predict_mask(model, image, device, size, mode, inference)
        palette = class_palette(max(int(mask.max()) + 1, _num_outputs(model)))
        for target, array in ((mask_target, mask), (overlay_target, overlay(image, mask, palette))):
            io.write_with(target, lambda tmp, array=array: Image.fromarray(array).save(tmp, format="PNG"))
            written.append(target)
    return written


def check_inputs(images: list[Path], stride: int, size: tuple[int, int] | None) -> None:
    """DatasetError unless ``size`` fits the model and every image is one page, decodes, and is at least
    ``stride`` and within :class:`~segpipe.data.decode.ImageLimit` (read from the header first, so a huge
    image is not decoded)."""
    if size is not None:
        _check_size(size, stride)
    for path in images:
        height, width = check_image_size(path)
        _check_single_page(path)
        if min(height, width) < stride:
            raise DatasetError(
                f"the image is {width}x{height} px, smaller than the model's output stride ({stride} px)",
                f"use an image at least {stride}x{stride} px",
                path,
            )
        read_image(path)  # decodes every pixel: a truncated file fails here, before any output is written


def _check_single_page(path: Path) -> None:
    """DatasetError for a multi-page file (a TIFF stack): only its first page would be predicted."""
    with Image.open(path, formats=IMAGE_FORMATS) as image:
        pages = getattr(image, "n_frames", 1)
    if pages > 1:
        raise DatasetError(
            f"the image has {pages} pages; predict reads one page per file",
            "save each page as its own file (e.g. `convert stack.tif page_%d.tif`) and pass those",
            path,
        )


def _check_size(size: tuple[int, int], stride: int) -> None:
    shown = " ".join(str(side) for side in size)
    nearest = " ".join(str(min(MAX_SIDE, max(stride, round(side / stride) * stride))) for side in size)
    if any(side <= 0 or side % stride for side in size):
        raise DatasetError(
            f"--size {shown} is not a multiple of the model's output stride ({stride} px)",
            f"use --size {nearest}",
        )
    if max(size) > MAX_SIDE:
        raise DatasetError(
            f"--size {shown} is more than {MAX_SIDE} px a side", f"use --size {nearest}, or the training size"
        )


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
                f"both {earlier} and {path} would be written as {path.stem}_mask.png "
                "(outputs are named by file name)",
                "list each image once and give images distinct names, "
                "or predict them into separate --out folders",
                path,
            )
        first_with_stem[path.stem.casefold()] = path
        pair = (out_dir / f"{path.stem}_mask.png", out_dir / f"{path.stem}_overlay.png")
        for target in pair:
            if target.resolve() in inputs:
                raise DatasetError(
                    f"its output {target.name} would overwrite the input image {inputs[target.resolve()]}",
                    "choose another --out folder",
                    path,
                )
        targets.append(pair)
    return targets


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetError(
            "the output folder is an existing file",
            "pass --out a folder (new or existing), not a file",
            out_dir,
        )
    blocking = next((parent for parent in out_dir.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise DatasetError(
            f"the output folder cannot be created: {blocking} is a file", "pass --out a folder path", out_dir
        )


def _check_input_path(path: Path) -> None:
    if path.is_dir():
        raise DatasetError(
            "the path is a directory, not an image file",
            f"pass the images inside it, e.g. {path}/*.png",
            path,
        )
    if not path.exists():
        raise DatasetError(
            "the image file does not exist",
            "check the path (relative paths start at the current folder)",
            path,
        )
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DatasetError(
            f"unsupported file type {path.suffix or '(no extension)'}",
            f"convert it to one of {', '.join(sorted(IMAGE_SUFFIXES))}",
            path,
        )


def _num_outputs(model: nn.Module) -> int:
    heads = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    return heads[-1].out_channels if heads else 1
