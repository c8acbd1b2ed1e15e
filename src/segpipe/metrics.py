"""Segmentation metrics from one confusion matrix, shared by training, evaluation and comparison.

The matrix is accumulated on the model's device with ``bincount`` and read back once,
so the training loop never synchronises per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class ConfusionMatrix:
    """Running ``[num_classes, num_classes]`` counts (rows: ground truth, columns: prediction)."""

    def __init__(self, num_classes: int, ignore_index: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``logits [B, C, H, W]``, ``target [B, H, W]`` (ignore_index pixels skipped)."""
        prediction = logits.argmax(dim=1)
        valid = target != self.ignore_index
        index = target[valid] * self.num_classes + prediction[valid]
        self.counts += torch.bincount(index, minlength=self.num_classes**2)

    def matrix(self) -> np.ndarray:
        return self.counts.view(self.num_classes, self.num_classes).cpu().numpy()


@dataclass(frozen=True)
class SegmentationMetrics:
    """Scores derived from a confusion matrix. Classes absent from both truth and prediction are NaN
    per class and left out of the means."""

    miou: float
    dice: float
    pixel_acc: float
    mean_class_acc: float
    per_class_iou: tuple[float, ...]
    per_class_dice: tuple[float, ...]

    def as_dict(
        self, prefix: str, class_names: tuple[str, ...]
    ) -> dict[str, float | dict[str, float | None]]:
        return {
            f"{prefix}miou": self.miou,
            f"{prefix}dice": self.dice,
            f"{prefix}pixel_acc": self.pixel_acc,
            f"{prefix}mean_class_acc": self.mean_class_acc,
            f"{prefix}per_class_iou": {
                name: _finite_or_none(v) for name, v in zip(class_names, self.per_class_iou, strict=True)
            },
        }


def _finite_or_none(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else 0.0


def metrics_from_confusion(matrix: np.ndarray) -> SegmentationMetrics:
    """mIoU, Dice, pixel accuracy and mean class accuracy from ``matrix[truth, prediction]``."""
    matrix = np.asarray(matrix, dtype=np.float64)
    true_positive = np.diag(matrix)
    truth = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    union = truth + predicted - true_positive
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
        dice = np.where(truth + predicted > 0, 2 * true_positive / (truth + predicted), np.nan)
        class_acc = np.where(truth > 0, true_positive / truth, np.nan)
    total = matrix.sum()
    return SegmentationMetrics(
        miou=_nanmean(iou),
        dice=_nanmean(dice),
        pixel_acc=float(true_positive.sum() / total) if total else 0.0,
        mean_class_acc=_nanmean(class_acc),
        per_class_iou=tuple(float(v) for v in iou),
        per_class_dice=tuple(float(v) for v in dice),
    )


def constant_prediction_confusion(class_pixels: np.ndarray, predicted_class: int) -> np.ndarray:
    """Confusion matrix of a predictor that outputs ``predicted_class`` everywhere, from per-class pixel
    counts."""
    num_classes = len(class_pixels)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    matrix[:, predicted_class] = class_pixels
    return matrix
