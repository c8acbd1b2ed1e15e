"""Decoded uint8 array cache, memory-mapped so training never decodes image files.

A split whose samples all have one size is a ``.npy`` pair, ``{split}_images.npy`` ``[N, H, W, 3]`` and
``{split}_masks.npy`` ``[N, H, W]``. A split of mixed sizes is packed: ``{split}_samples.npy``, one flat
uint8 blob holding each sample's image (H*W*3 bytes) followed by its mask (H*W bytes), and
``{split}_index.npy``, int64 ``[N, 3]`` rows of (offset, height, width). Both are written sample by sample
(:class:`SplitWriter`) and memory-mapped for reading, without unpickling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

CACHE_DIR = "cache"
_REPREPARE = "re-run prepare (dvc repro -f prepare)"


class SplitArrays:
    """The samples of one split (uint8): ``image(i)`` HxWx3 and ``mask(i)`` HxW, views of the cache.

    ``SplitArrays(images, masks)`` wraps ``[N, H, W, 3]`` / ``[N, H, W]`` arrays of one size;
    :meth:`packed` wraps a blob and its index, for samples of mixed sizes.
    """

    __slots__ = ("_blob", "_images", "_index", "_masks", "_source")

    def __init__(self, images: np.ndarray, masks: np.ndarray) -> None:
        if images.ndim != 4 or images.shape[3] != 3 or images.shape[:3] != masks.shape:
            raise ValueError(
                f"images {images.shape} and masks {masks.shape} do not match: "
                "expected [N, H, W, 3] and [N, H, W]"
            )
        self._images, self._masks = images, masks
        count, height, width = masks.shape
        self._blob: np.ndarray | None = None
        self._source: tuple[Path, str] | None = None
        # rows (offset, height, width) as for a packed split; offsets are unused with whole arrays
        self._index = np.column_stack(
            [np.zeros(count, np.int64), np.full(count, height, np.int64), np.full(count, width, np.int64)]
        )
        self._index.flags.writeable = False

    @classmethod
    def packed(cls, blob: np.ndarray, index: np.ndarray) -> SplitArrays:
        """Samples of any sizes in one flat uint8 ``blob``; ``index`` rows are (offset, height, width)."""
        if blob.ndim != 1 or blob.dtype != np.uint8 or index.ndim != 2 or index.shape[1] != 3:
            raise ValueError(
                f"a packed split needs a flat uint8 blob and an [N, 3] index, got {blob.shape} {blob.dtype} "
                f"and {index.shape}"
            )
        ends = index[:, 0] + index[:, 1] * index[:, 2] * 4
        if len(index) and (index.min() < 0 or ends.max() > blob.size):
            raise ValueError(f"the index points outside the {blob.size}-byte blob")
        split = cls.__new__(cls)
        split._blob, split._index = blob, np.array(index, dtype=np.int64)
        split._index.flags.writeable = False
        split._images = split._masks = split._source = None
        return split

    def __reduce__(self) -> tuple[object, ...]:
        """A split loaded from the cache travels to worker processes as its location, not its pixels."""
        if self._source is not None:
            return load_split, self._source
        if self._blob is not None:
            return SplitArrays.packed, (np.asarray(self._blob), self._index)
        return SplitArrays, (np.asarray(self._images), np.asarray(self._masks))

    def __len__(self) -> int:
        return len(self._index)

    def shape(self, i: int) -> tuple[int, int]:
        """(height, width) of sample ``i``."""
        _, height, width = self._index[i]
        return int(height), int(width)

    @property
    def sizes(self) -> np.ndarray:
        """int64 ``[N, 2]``: (height, width) of every sample."""
        return self._index[:, 1:]

    @property
    def uniform_size(self) -> tuple[int, int] | None:
        """(height, width) shared by every sample, None when sizes differ (or the split is empty)."""
        if len(self) == 0 or (self._index[:, 1:] != self._index[0, 1:]).any():
            return None
        return self.shape(0)

    @property
    def nbytes(self) -> int:
        """Decoded bytes of all images and masks (4 per pixel)."""
        return int((self._index[:, 1] * self._index[:, 2]).sum() * 4)

    def image(self, i: int) -> np.ndarray:
        """Sample ``i``'s HxWx3 uint8 image (a view, no copy)."""
        if self._images is not None:
            return self._images[i]
        offset, height, width = (int(v) for v in self._index[i])
        return self._blob[offset : offset + height * width * 3].reshape(height, width, 3)

    def mask(self, i: int) -> np.ndarray:
        """Sample ``i``'s HxW uint8 mask (a view, no copy)."""
        if self._masks is not None:
            return self._masks[i]
        offset, height, width = (int(v) for v in self._index[i])
        start = offset + height * width * 3
        return self._blob[start : start + height * width].reshape(height, width)

    @property
    def images(self) -> np.ndarray:
        """All images as ``[N, H, W, 3]``; only for a split of one size."""
        if self._images is None:
            self._images, self._masks = self._stacked_views()
        return self._images

    @property
    def masks(self) -> np.ndarray:
        """All masks as ``[N, H, W]``; only for a split of one size."""
        if self._masks is None:
            self._images, self._masks = self._stacked_views()
        return self._masks

    def _stacked_views(self) -> tuple[np.ndarray, np.ndarray]:
        """Strided ``[N, ...]`` views of a packed blob whose samples share one size and lie back to back."""
        size = self.uniform_size
        if size is None:
            sizes = sorted({f"{h}x{w}" for h, w in self.sizes.tolist()})
            shown = ", ".join(sizes[:3]) + (f" and {len(sizes) - 3} more" if len(sizes) > 3 else "")
            raise ValueError(
                f"this split holds images of different sizes ({shown}): there is no [N, H, W] array "
                "of it; read samples one by one with image(i) / mask(i)"
            )
        height, width = size
        stride = height * width * 4
        if (self._index[:, 0] != np.arange(len(self)) * stride).any():
            raise ValueError("the packed samples are not back to back: read them with image(i) / mask(i)")
        blob = self._blob
        images = np.lib.stride_tricks.as_strided(
            blob, (len(self), height, width, 3), (stride, width * 3, 3, 1), writeable=False
        )
        masks = np.lib.stride_tricks.as_strided(
            blob[height * width * 3 :], (len(self), height, width), (stride, width, 1), writeable=False
        )
        return images, masks


def cache_paths(prepared_dir: Path, split: str) -> tuple[Path, Path]:
    """The ``.npy`` pair of a split of one size: images, masks."""
    base = Path(prepared_dir) / CACHE_DIR
    return base / f"{split}_images.npy", base / f"{split}_masks.npy"


def packed_paths(prepared_dir: Path, split: str) -> tuple[Path, Path]:
    """The files of a split of mixed sizes: the blob, its index."""
    base = Path(prepared_dir) / CACHE_DIR
    return base / f"{split}_samples.npy", base / f"{split}_index.npy"


class SplitWriter:
    """Writes one split's cache files sample by sample, in any order (a context manager).

    The size of every sample is given up front, which decides the storage: a ``.npy`` pair when all sizes
    are equal, else the packed blob. Samples go out with ordinary file writes, so the written data stays in
    the operating system's page cache rather than in this process's memory. Files are written in place:
    build them inside a staging folder (:func:`segpipe.io.atomic_directory`)."""

    def __init__(self, prepared_dir: Path, split: str, sizes: Sequence[tuple[int, int]]) -> None:
        if not sizes:
            raise ValueError(f"split {split!r} has no samples to write")
        (Path(prepared_dir) / CACHE_DIR).mkdir(parents=True, exist_ok=True)
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        areas = self.sizes[:, 0] * self.sizes[:, 1]
        count, (height, width) = len(areas), self.sizes[0].tolist()
        if (self.sizes == self.sizes[0]).all():
            images_path, masks_path = cache_paths(prepared_dir, split)
            self._image_file, image_start = _new_npy(images_path, (count, height, width, 3))
            self._mask_file, mask_start = _new_npy(masks_path, (count, height, width))
            self._image_offsets = image_start + np.arange(count) * areas[0] * 3
            self._mask_offsets = mask_start + np.arange(count) * areas[0]
        else:
            blob_path, index_path = packed_paths(prepared_dir, split)
            starts = np.cumsum(areas * 4) - areas * 4
            np.save(index_path, np.column_stack([starts, self.sizes]))
            self._image_file, blob_start = _new_npy(blob_path, (int(areas.sum()) * 4,))
            self._mask_file = self._image_file
            self._image_offsets = blob_start + starts
            self._mask_offsets = self._image_offsets + areas * 3

    def write(self, i: int, image: np.ndarray, mask: np.ndarray) -> None:
        """Store sample ``i``; its uint8 image and mask must have the size announced for it."""
        expected = tuple(self.sizes[i].tolist())
        shapes_ok = image.shape == (*expected, 3) and mask.shape == expected
        if not (shapes_ok and image.dtype == mask.dtype == np.uint8):
            raise ValueError(
                f"sample {i} is {image.shape} {image.dtype} (mask {mask.shape} {mask.dtype}) but uint8 "
                f"{expected} was announced for it"
            )
        for file, offset, array in (
            (self._image_file, self._image_offsets[i], image),
            (self._mask_file, self._mask_offsets[i], mask),
        ):
            file.seek(int(offset))
            file.write(np.ascontiguousarray(array).data)

    def close(self) -> None:
        self._image_file.close()
        self._mask_file.close()

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _new_npy(path: Path, shape: tuple[int, ...]) -> tuple[BinaryIO, int]:
    """Create a uint8 ``.npy`` file of ``shape`` (zeros, as np.save would lay it out); return it open for
    writing and the offset of its data."""
    file = path.open("w+b")
    np.lib.format.write_array_header_1_0(file, {"descr": "|u1", "fortran_order": False, "shape": shape})
    start = file.tell()
    file.truncate(start + math.prod(shape))
    return file, start


def save_split(prepared_dir: Path, split: str, arrays: SplitArrays) -> None:
    """Write a whole in-memory split (small data, tests) as prepare would."""
    with SplitWriter(prepared_dir, split, [arrays.shape(i) for i in range(len(arrays))]) as writer:
        for i in range(len(arrays)):
            writer.write(i, arrays.image(i), arrays.mask(i))


def load_split(prepared_dir: Path, split: str) -> SplitArrays:
    """Memory-map one split's cache (either storage); a clear error if prepare has not produced it."""
    images_path, masks_path = cache_paths(prepared_dir, split)
    blob_path, index_path = packed_paths(prepared_dir, split)
    if blob_path.is_file() and index_path.is_file():
        blob = np.load(blob_path, mmap_mode="r", allow_pickle=False)
        index = np.load(index_path, allow_pickle=False)
        try:
            arrays = SplitArrays.packed(blob, index)
        except ValueError as error:
            raise ValueError(f"{blob_path} / {index_path}: {error}; {_REPREPARE}") from None
        arrays._source = (Path(prepared_dir), split)
        return arrays
    for path in (images_path, masks_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the prepare stage first (dvc repro prepare)")
    images = np.load(images_path, mmap_mode="r", allow_pickle=False)
    masks = np.load(masks_path, mmap_mode="r", allow_pickle=False)
    if images.ndim != 4 or images.shape[:3] != masks.shape:
        raise ValueError(
            f"{images_path} has shape {images.shape} but {masks_path} has {masks.shape}: "
            f"the cache is inconsistent, {_REPREPARE}"
        )
    arrays = SplitArrays(images, masks)
    arrays._source = (Path(prepared_dir), split)
    return arrays
