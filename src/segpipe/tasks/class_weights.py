"""Per-class loss weights from the training split's class pixel counts (``train.loss.class_weights``)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from segpipe.data.manifest import MANIFEST_FILE, class_pixel_columns


def median_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus 2015; SegNet) from per-image pixel counts ``[images,
    classes]``: ``freq(c)`` = pixels of class c / labelled pixels of the images holding c, and
    ``weight(c) = median(freq) / freq(c)``; a class absent from every image gets 0 (nothing to weigh)."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    labelled = counts.sum(axis=1, keepdims=True)
    pixels = counts.sum(axis=0)
    holders = np.where(present, labelled, 0).sum(axis=0)
    seen = pixels > 0
    frequency = np.divide(pixels, holders, out=np.zeros_like(pixels), where=seen)
    return np.divide(np.median(frequency[seen]), frequency, out=np.zeros_like(pixels), where=seen)


def inverse_sqrt_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """``1 / sqrt(share of the labelled pixels)`` per class, scaled to a mean of 1 over the classes present;
    a class absent from every image gets 0."""
    pixels = np.asarray(counts, dtype=np.float64).sum(axis=0)
    seen = pixels > 0
    weights = np.divide(1.0, np.sqrt(pixels / pixels.sum()), out=np.zeros_like(pixels), where=seen)
    return weights / weights[seen].mean()


SCHEMES = {
    "median_frequency": median_frequency_weights,
    "inverse_sqrt_frequency": inverse_sqrt_frequency_weights,
}


def training_pixel_counts(prepared_dir: Path, num_classes: int) -> np.ndarray:
    """Per-image class pixel counts ``[images, classes]`` of the training split (the prepared manifest; read
    with the csv module, as training hosts need not have pandas)."""
    columns = class_pixel_columns(num_classes)
    with (Path(prepared_dir) / MANIFEST_FILE).open(newline="", encoding="utf-8") as handle:
        rows = [[float(row[c]) for c in columns] for row in csv.DictReader(handle) if row["split"] == "train"]
    return np.array(rows, dtype=np.float64).reshape(-1, num_classes)


def class_weights_for(scheme: str, prepared_dir: Path, num_classes: int) -> list[float]:
    """The weights of a frequency ``scheme`` (see :data:`SCHEMES`) for the prepared training split."""
    weights = SCHEMES[scheme](training_pixel_counts(prepared_dir, num_classes))
    return [float(w) for w in weights]
