"""Unlabelled images for denoising pretraining (``pretrain.unlabelled_root``).

Each image is decoded upright (EXIF orientation), as RGB, and fitted exactly as prepare fits a training
image: to ``prepare.image_size``, or kept at its native size bounded by ``prepare.max_side``. Its mask is
``prepare.ignore_index`` throughout (a denoiser reads no masks). :func:`write_pretraining_data` writes a
prepared folder the trainer reads unchanged: a ``train`` split of the prepared training samples followed by
these images, the prepared ``val`` split, ``dataset.json`` and the prepared ``manifest.csv`` (which lists the
labelled samples only).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segpipe import io
from segpipe.config import PrepareParams
from segpipe.data.cache import SplitWriter, load_split, save_split
from segpipe.data.decode import (
    IMAGE_FORMATS,
    IMAGE_SUFFIXES,
    ImageLimit,
    check_image_size,
    file_digest,
    read_image,
)
from segpipe.data.errors import DatasetError
from segpipe.data.manifest import MANIFEST_FILE, DatasetInfo
from segpipe.data.prepare import upright_size
from segpipe.data.preprocess import fit_to_size, limit_side

RECORD_FILE = "unlabelled.json"
"""In a folder :func:`write_pretraining_data` wrote: the key of its inputs and how many images it added."""


def list_images(folder: Path) -> list[Path]:
    """The image files under ``folder`` at any depth (by suffix), sorted by their path inside it."""
    found = (path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def data_key(prepared: Path, folder: Path, images: Sequence[Path], params: PrepareParams) -> str:
    """A digest of everything the pretraining data is built from: the prepared data, the fitting settings
    and each image's path in ``folder`` and bytes."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(DatasetInfo.load(prepared))).encode())
    digest.update(hashlib.sha256((prepared / MANIFEST_FILE).read_bytes()).digest())
    fitting = params.model_dump(
        mode="json",
        include={"image_size", "resize", "max_side", "ignore_index", "max_image_side", "max_image_pixels"},
    )
    digest.update(json.dumps(fitting, sort_keys=True).encode())
    for path in images:
        digest.update(f"{path.relative_to(folder).as_posix()}:{file_digest(path)}\n".encode())
    return digest.hexdigest()


def fitted_size(path: Path, params: PrepareParams) -> tuple[int, int]:
    """(height, width) the image at ``path`` will have once fitted (from its header when sizes are native)."""
    if params.image_size is not None:
        return params.image_size
    return upright_size(path, IMAGE_FORMATS, params.max_side)


def load_unlabelled(path: Path, params: PrepareParams) -> tuple[np.ndarray, np.ndarray]:
    """The image at ``path`` upright, RGB and fitted as prepare fits a training image, and its mask of
    ``params.ignore_index`` alone; DatasetError naming the file on any problem."""
    limit = ImageLimit(
        params.max_image_side,
        params.max_image_pixels,
        "pretrain",
        "downscale the image, or raise prepare.max_image_side / prepare.max_image_pixels",
    )
    check_image_size(path, limit)
    image = read_image(path)
    mask = np.full(image.shape[:2], params.ignore_index, dtype=np.uint8)
    if params.image_size is None:
        return limit_side(image, mask, params.max_side)
    return fit_to_size(image, mask, params.image_size, params.resize, params.ignore_index)


def _write_images(writer: SplitWriter, start: int, images: Sequence[Path], params: PrepareParams) -> None:
    """Decode, fit and write ``images`` as samples ``start``, ``start + 1``, ...; a bad file is a
    DatasetError naming it and ``pretrain.unlabelled_root``."""
    for index, path in enumerate(images, start=start):
        try:
            image, mask = load_unlabelled(path, params)
        except DatasetError as error:
            raise DatasetError(f"in pretrain.unlabelled_root, {error.problem}", error.fix, path) from error
        if image.shape[:2] != tuple(writer.sizes[index].tolist()):  # the size announced from its header
            raise DatasetError("its pixels and its header disagree on its size", "re-save the image", path)
        writer.write(index, image, mask)


def write_pretraining_data(
    prepared: Path, images: Sequence[Path], params: PrepareParams, out_dir: Path, key: str
) -> None:
    """Write ``out_dir`` (replaced atomically): the prepared data with ``images`` appended to its ``train``
    split, and :data:`RECORD_FILE` holding ``key`` (:func:`data_key`)."""
    info = DatasetInfo.load(prepared)
    train = load_split(prepared, "train")
    sizes = [fitted_size(path, params) for path in images]
    with io.atomic_directory(out_dir) as staging:
        with SplitWriter(staging, "train", [*train.sizes.tolist(), *sizes]) as writer:
            for index in range(len(train)):
                writer.write(index, train.image(index), train.mask(index))
            _write_images(writer, len(train), images, params)
        save_split(staging, "val", load_split(prepared, "val"))
        shutil.copyfile(prepared / MANIFEST_FILE, staging / MANIFEST_FILE)
        uniform = all(size == info.image_size for size in sizes)
        dataclasses.replace(
            info,
            image_size=info.image_size if uniform else None,
            split_sizes={"train": len(train) + len(images), "val": info.split_sizes["val"]},
        ).save(staging)
        io.write_json(staging / RECORD_FILE, {"key": key, "images": len(images)})


def is_written(out_dir: Path, key: str) -> bool:
    """Whether ``out_dir`` holds the pretraining data of ``key`` (:func:`data_key`)."""
    record = out_dir / RECORD_FILE
    return record.is_file() and io.read_json(record).get("key") == key
