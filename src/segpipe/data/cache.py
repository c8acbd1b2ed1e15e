"""Decoded uint8 array cache: one ``.npy`` pair per split, memory-mapped so training never decodes image
files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segpipe import io

CACHE_DIR = "cache"


@dataclass(frozen=True)
class SplitArrays:
    """All samples of one split: images ``[N, H, W, 3]`` and masks ``[N, H, W]``, both uint8."""

    images: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


def cache_paths(prepared_dir: Path, split: str) -> tuple[Path, Path]:
    base = Path(prepared_dir) / CACHE_DIR
    return base / f"{split}_images.npy", base / f"{split}_masks.npy"


def _save_array(target: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:  # a file object stops np.save from appending ".npy"
            np.save(handle, array)

    io.write_with(target, write)


def save_split(prepared_dir: Path, split: str, arrays: SplitArrays) -> None:
    images_path, masks_path = cache_paths(prepared_dir, split)
    _save_array(images_path, arrays.images)
    _save_array(masks_path, arrays.masks)


def load_split(prepared_dir: Path, split: str) -> SplitArrays:
    """Memory-map one split's cache; a clear error if prepare has not produced it."""
    images_path, masks_path = cache_paths(prepared_dir, split)
    for path in (images_path, masks_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the prepare stage first (dvc repro prepare)")
    images = np.load(images_path, mmap_mode="r")
    masks = np.load(masks_path, mmap_mode="r")
    if images.shape[:3] != masks.shape:
        raise ValueError(
            f"{images_path} has shape {images.shape} but {masks_path} has {masks.shape}: "
            "the cache is inconsistent, re-run prepare (dvc repro -f prepare)"
        )
    return SplitArrays(images=images, masks=masks)
