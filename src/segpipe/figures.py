"""Figures: headless matplotlib with atomic PNG writes; confusion matrix, per-class IoU bars, a grid of test
predictions."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from segpipe import io


def class_palette(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` uint8 colours, evenly spread hues (class 0 dark grey, as background)."""
    colours = [(64, 64, 64)] + [
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb(k / max(num_classes - 1, 1), 0.85, 0.95))
        for k in range(num_classes - 1)
    ]
    return np.array(colours[:num_classes], dtype=np.uint8)


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported only where a plot is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(figure, target: Path) -> None:
    """Write ``figure`` to ``target`` atomically and release it."""
    io.write_with(target, lambda tmp: figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    pyplot().close(figure)


def confusion_matrix_png(matrix: np.ndarray, class_names: tuple[str, ...], target: Path, title: str) -> None:
    """Row-normalised confusion matrix (rows: truth, columns: prediction) with the fractions written in."""
    plt = pyplot()
    rows = matrix.sum(1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    size = 1.0 + 0.6 * len(class_names)
    figure, axis = plt.subplots(figsize=(size + 1.5, size))
    shown = axis.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
    axis.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for (row, column), value in np.ndenumerate(normalised):
        axis.text(
            column,
            row,
            f"{value:.2f}",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if value > 0.5 else "black",
        )
    figure.colorbar(shown, ax=axis, fraction=0.046)
    axis.set_title(title)
    save_png(figure, target)


def per_class_iou_png(per_class: dict[str, float | None], target: Path, title: str) -> None:
    plt = pyplot()
    names = list(per_class)
    values = [per_class[name] or 0.0 for name in names]
    figure, axis = plt.subplots(figsize=(max(5, 0.8 * len(names)), 3.5))
    axis.bar(names, values, color="tab:blue")
    for x, value in enumerate(values):
        axis.text(x, value, f"{value:.2f}", ha="center", va="bottom", fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("test IoU")
    axis.tick_params(axis="x", rotation=30)
    axis.set_title(title)
    save_png(figure, target)


@torch.no_grad()
def prediction_grid_png(
    model: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    num_classes: int,
    ignore_index: int,
    target: Path,
) -> None:
    """One row per sample: image | ground truth | prediction, classes in a fixed palette (ignore: black)."""
    model.eval()
    predictions = model(images).argmax(1)
    palette = np.vstack([class_palette(num_classes), np.zeros((1, 3), np.uint8)])

    def colour(labels: torch.Tensor) -> np.ndarray:
        ids = labels.cpu().numpy().astype(np.int64)
        return palette[np.where(ids == ignore_index, num_classes, np.minimum(ids, num_classes))]

    rows = []
    for image, mask, prediction in zip(images, masks, predictions, strict=True):
        picture = image.permute(1, 2, 0).clamp(0, 1).mul(255).round().byte().cpu().numpy()
        rows.append(np.concatenate([picture, colour(mask), colour(prediction)], axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    scale = max(1, 256 // grid.width + 1) if grid.width < 256 else 1
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    io.write_with(target, lambda tmp: grid.save(tmp, format="PNG"))
