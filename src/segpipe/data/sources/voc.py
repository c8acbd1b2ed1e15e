"""Pascal VOC 2012 segmentation: ``JPEGImages/``, ``SegmentationClass/`` and
``ImageSets/Segmentation/*.txt``."""

from __future__ import annotations

from pathlib import Path

from segpipe.data.errors import DatasetError
from segpipe.data.sources.base import SourceListing
from segpipe.data.sources.files import listed_samples, require_root

CLASS_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
IGNORE = 255
LAYOUT = (
    "<root>/JPEGImages, <root>/SegmentationClass and <root>/ImageSets/Segmentation"
    " (root = the VOC2012 folder or the folder holding VOCdevkit/)"
)


def list_voc(root: Path) -> SourceListing:
    """List VOC 2012: train.txt samples are left unsplit (val is carved from them), val.txt samples become
    test (VOC's own test masks are not public). Masks are palette PNGs whose palette indices are the class
    ids."""
    require_root(root, LAYOUT)
    voc = _voc_folder(root)
    lists = voc / "ImageSets" / "Segmentation"
    samples = listed_samples(
        {lists / "train.txt": None, lists / "val.txt": "test"},
        image_for=lambda stem: voc / "JPEGImages" / f"{stem}.jpg",
        mask_for=lambda stem: voc / "SegmentationClass" / f"{stem}.png",
        fix="restore the file from VOCtrainval_11-May-2012.tar, or remove the line from the list",
    )
    return SourceListing(samples, CLASS_NAMES, ignore_index=IGNORE, mask_format="ids")


def _voc_folder(root: Path) -> Path:
    devkit = root / "VOCdevkit" / "VOC2012"
    for candidate in (root, devkit):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DatasetError(
        f"no JPEGImages folder in {root} or {devkit}", f"set prepare.root to a folder with {LAYOUT}", root
    )
